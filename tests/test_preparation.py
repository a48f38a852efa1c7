"""Learning the student's preparation of the inputs from the first rows of their arrays."""

from __future__ import annotations

import numpy as np
import pytest

from autograder.grading.preparation import Preparation, learn_preparation

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, size=(128, 28, 28), dtype=np.uint8)
HOUSES = RNG.normal(5, 3, size=(128, 13)) * RNG.uniform(0.5, 50, size=13)


@pytest.mark.parametrize(
    "prepared",
    [
        IMAGES.reshape(128, 784).astype("float32") / 255,  # the lab's
        IMAGES.astype("float32") / 255,  # flattened inside the model
        IMAGES.reshape(128, 28, 28, 1).astype("float32") / 255,  # channel axis last
        IMAGES.reshape(128, 1, 28, 28).astype("float32") / 255,  # channels first
        IMAGES.reshape(128, 784).astype("float32"),  # scaled inside the model
        IMAGES.reshape(128, 784),  # raw uint8
        (IMAGES.reshape(128, 784).astype("float32") - 127.5) / 127.5,  # to [-1, 1]
    ],
)
def test_reshapes_and_scalings_are_learned(prepared):
    held = RNG.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    found, why = learn_preparation([("`train_images`", IMAGES, prepared)])
    assert found is not None, why
    assert found.source == "`train_images`"
    out = found.apply(held)
    assert out.shape == (50, *prepared.shape[1:]) and out.dtype == prepared.dtype
    # what the student's own code would have made of the held-out images
    scale = np.abs(prepared.astype("float64")).max()
    want = found.apply(IMAGES)
    assert np.allclose(want, prepared, atol=1e-5 * max(1, scale))


@pytest.mark.parametrize(
    ("preparation", "raw"),
    [
        (Preparation((28, 28, 1), "float32", (1 / 255,), (0.0,)), "images"),
        (Preparation((784,), "float32", (1 / 127.5,), (-1.0,)), "images"),
        (Preparation((784,), "uint8"), "images"),
        (
            Preparation(
                (13,), "float32", tuple(1 / HOUSES.std(0)), tuple(-HOUSES.mean(0) / HOUSES.std(0))
            ),
            "houses",
        ),
    ],
)
def test_a_preparation_applied_in_blocks_gives_the_whole_arrays_numbers(preparation, raw):
    """Held-out inputs are prepared a block of rows at a time: bit for bit what the
    transformation gives on the whole array in float64 at once, on more rows than a block,
    and on none."""
    x = (
        RNG.integers(0, 256, size=(2500, 28, 28), dtype=np.uint8)
        if raw == "images"
        else RNG.normal(5, 3, size=(2500, 13)) * 10
    )
    whole = x.astype(np.float64).reshape(len(x), -1) * np.asarray(preparation.scale)
    whole = (whole + np.asarray(preparation.offset)).reshape((len(x), *preparation.shape))
    got = preparation.apply(x)
    assert got.dtype == np.dtype(preparation.dtype)
    assert np.array_equal(got, whole.astype(preparation.dtype))
    assert preparation.apply(x[:0]).shape == (0, *preparation.shape)


def test_standardisation_per_feature_is_learned():
    mean, std = HOUSES.mean(0), HOUSES.std(0)
    prepared = ((HOUSES - mean) / std).astype("float32")
    found, _ = learn_preparation([("`train_data`", HOUSES, prepared)])
    assert found is not None and len(found.scale) == 13
    held = RNG.normal(5, 3, size=(20, 13))
    assert np.allclose(found.apply(held), (held - mean) / std, atol=1e-4)


def test_padding_length_and_side_are_learned():
    reviews = np.empty(128, dtype=object)
    for i in range(128):
        reviews[i] = list(RNG.integers(1, 10000, size=RNG.integers(5, 60)))
    from keras.utils import pad_sequences

    for padding, truncating in [("pre", "pre"), ("post", "post"), ("post", "pre")]:
        prepared = pad_sequences(list(reviews), maxlen=30, padding=padding, truncating=truncating)
        found, why = learn_preparation([("`input_train`", reviews, prepared)])
        assert found is not None, why
        assert found.pad == (30, padding, truncating)
        assert f"padding={padding}, truncating={truncating}" in found.describe()


def test_arrays_that_are_not_a_transformation_of_the_raw_rows_fall_back():
    shuffled = IMAGES.reshape(128, 784)[::-1].astype("float32") / 255
    fewer = IMAGES[:, :14, :].reshape(128, -1).astype("float32")
    broken = IMAGES.reshape(128, 784).astype("float32") / 255
    broken[3, 5] = np.nan
    found, why = learn_preparation(
        [
            ("the inputs fit() received", IMAGES, shuffled),
            ("`train_images`", IMAGES, fewer),
            ("`test_images`", IMAGES, broken),
        ]
    )
    assert found is None
    assert why == [
        "the inputs fit() received is not a reshaped, scaled or shifted copy of the raw data",
        "`train_images` holds 392 values per example; the raw data has 784",
        "`test_images` holds non-finite values",
    ]
    # The first candidate that reproduces wins; those before it say why not.
    good = IMAGES.reshape(128, 784).astype("float32") / 255
    found, why = learn_preparation(
        [("the inputs fit() received", IMAGES, shuffled), ("`train_images`", IMAGES, good)]
    )
    assert found is not None and found.source == "`train_images`" and len(why) == 1
