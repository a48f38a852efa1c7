"""Rubric checks on hand-made evidence: fast, no TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from autograder.grading.checks import run_checks
from autograder.grading.evidence import (
    ArraySummary,
    Evidence,
    LayerInfo,
    ModelSummary,
    summarize_array,
)
from autograder.rubric import load_rubric

RUBRIC = load_rubric("lab3_mnist_dense")
COMPILE = {
    "optimizer": {"class_name": "RMSprop"},
    "loss": "categorical_crossentropy",
    "metrics": ["accuracy"],
}


def model(*layers: tuple[str, int, str], input_shape=(784,), params=407050, compile_config=None):
    infos = tuple(LayerInfo(t, u, a, (None, u), 0) for t, u, a in layers)
    return ModelSummary(
        "Sequential",
        input_shape,
        (None, layers[-1][1]),
        infos,
        params,
        COMPILE if compile_config is None else compile_config,
    )


GOOD_MODEL = model(("Dense", 512, "relu"), ("Dense", 10, "softmax"))


def arr(*args) -> dict:
    return {"type": "array", **ArraySummary(*args).to_dict()}


GOOD_ARRAYS = {
    "train_images": arr((3000, 784), "float32", 0.0, 1.0, True),
    "train_labels": arr((3000, 10), "float32", 0.0, 1.0, True),
}


def grade(ev: Evidence) -> dict:
    return {r.id: r for r in run_checks(RUBRIC, ev)}


def evidence(**kw) -> Evidence:
    base = dict(
        model=GOOD_MODEL,
        values=GOOD_ARRAYS,
        metrics={"accuracy": 0.95},
        data_source="offline-sample",
    )
    base.update(kw)
    return Evidence(**base)


def test_correct_evidence_gets_full_marks():
    results = grade(evidence())
    assert {k: r.score for k, r in results.items()} == {
        "check_architecture": 3,
        "check_compile": 1,
        "check_inputs": 2,
        "check_accuracy": 4,
    }
    assert all(r.status == "pass" for r in results.values())


def test_wrong_units_and_activation_are_named():
    ev = evidence(model=model(("Dense", 64, "sigmoid"), ("Dense", 10, "softmax"), params=50890))
    r = grade(ev)["check_architecture"]
    assert r.score == 1.5  # the input shape and the output are still right: a quarter each lost
    assert "layer 1: expected Dense 512 relu, found Dense with 64 units" in r.messages
    assert "the network has 50,890 parameters; the lab's has 407,050" in r.messages


def test_missing_and_extra_layers():
    short = grade(evidence(model=model(("Dense", 512, "relu"), params=401920)))
    assert "missing layer(s) at the end: Dense 10 softmax" in short["check_architecture"].messages
    extra = model(("Dense", 512, "relu"), ("Dense", 10, "softmax"), ("Dense", 10, "softmax"))
    msgs = grade(evidence(model=extra))["check_architecture"].messages
    assert "layer 3 (Dense) is extra: the lab's network has no more" in msgs


def test_unflattened_input_is_explained():
    ev = evidence(
        model=model(("Dense", 512, "relu"), ("Dense", 10, "softmax"), input_shape=(28, 28))
    )
    msgs = grade(ev)["check_architecture"].messages
    assert msgs[0] == (
        "the first layer expects inputs of shape (28, 28); the lab needs (784,): start the "
        "network with `keras.Input(shape=(784,))` and train it on arrays of shape (n, 784)"
    )


def test_compile_settings():
    cfg = {"optimizer": {"class_name": "Adam"}, "loss": "mse", "metrics": ["mae"]}
    r = grade(
        evidence(model=model(("Dense", 512, "relu"), ("Dense", 10, "softmax"), compile_config=cfg))
    )["check_compile"]
    assert r.score == 0 and r.status == "fail"
    assert (
        'optimizer: found adam; the lab uses RMSprop: pass `optimizer="rmsprop"` to compile()'
        in r.messages
    )
    never = grade(
        evidence(model=model(("Dense", 512, "relu"), ("Dense", 10, "softmax"), compile_config={}))
    )["check_compile"]
    assert never.messages == ("the network was never compiled: call compile() before fit()",)
    aliases = {
        "optimizer": "rmsprop",
        "loss": {"class_name": "CategoricalCrossentropy"},
        "metrics": ["acc"],
    }
    ok = grade(
        evidence(
            model=model(("Dense", 512, "relu"), ("Dense", 10, "softmax"), compile_config=aliases)
        )
    )["check_compile"]
    assert ok.score == 1


@pytest.mark.parametrize(
    ("images", "score", "fragment"),
    [
        # the rubric's costs: shape, dtype and labels a quarter each; unscaled (or twice
        # scaled) pixels half, a conceptual error
        (arr((3000, 28, 28), "uint8", 0, 255, True), 0.0, "expected (n, 784) (one row of"),
        (arr((3000, 784), "uint8", 0, 255, True), 0.5, "divide the pixel values by 255"),
        (arr((3000, 784), "float64", 0, 1, True), 1.5, '.astype("float32")`'),
        (arr((3000, 784), "float32", 0, 1 / 255, True), 1.0, "divided twice"),
    ],
)
def test_input_problems(images, score, fragment):
    r = grade(evidence(values={**GOOD_ARRAYS, "train_images": images}))["check_inputs"]
    assert r.score == score
    assert any(fragment in m for m in r.messages), r.messages


def test_sparse_labels_are_flagged():
    values = {**GOOD_ARRAYS, "train_labels": arr((3000,), "uint8", 0, 9, True)}
    r = grade(evidence(values=values))["check_inputs"]
    assert r.score == 1.5
    assert any("to_categorical" in m for m in r.messages)


def test_accuracy_partial_credit_and_zero():
    th = RUBRIC.check("check_accuracy").threshold("offline-sample")
    mid = (th.full + th.zero) / 2
    r = grade(evidence(metrics={"accuracy": mid}))["check_accuracy"]
    assert r.status == "partial" and r.score == pytest.approx(2.0, abs=0.01)
    low = grade(evidence(metrics={"accuracy": 0.1}))["check_accuracy"]
    assert low.score == 0 and "has not learned enough" in low.messages[0]
    assert "held-out accuracy 0.1000" in low.messages[0]


def test_missing_model_fails_every_model_check_with_the_reason():
    ev = evidence(
        model=None,
        metrics={},
        problems={"model": "`network` is not defined", "accuracy": "`network` is not defined"},
    )
    r = grade(ev)
    for cid in ("check_architecture", "check_compile", "check_accuracy"):
        assert r[cid].score == 0
        assert r[cid].messages == ("`network` is not defined",)
    assert r["check_inputs"].score == 2  # the arrays were still right


def test_summarize_array():
    s = summarize_array(np.array([[0, 255]], dtype=np.uint8))
    assert s == ArraySummary((1, 2), "uint8", 0.0, 255.0, True)
    assert summarize_array(np.array([np.nan, 1.0])).finite is False


@pytest.mark.parametrize(
    ("layers", "ok"),
    [
        ([("Embedding", None, None), ("SimpleRNN", 32, "tanh"), ("Dense", 1, "sigmoid")], True),
        ([("Embedding", None, None), ("LSTM", 32, "tanh"), ("Dense", 1, "sigmoid")], True),
        (
            [
                ("Embedding", None, None),
                ("Bidirectional", None, None),
                ("Dropout", None, None),
                ("Dense", 16, "relu"),
                ("Dense", 1, "sigmoid"),
            ],
            True,
        ),
        ([("Embedding", None, None), ("Flatten", None, None), ("Dense", 1, "sigmoid")], False),
    ],
)
def test_rnn_rubric_accepts_recurrent_variants(layers, ok):
    rubric = load_rubric("lab5_imdb_rnn")
    m = model(
        *layers,
        input_shape=(None,),
        params=1,
        compile_config={"loss": "binary_crossentropy", "metrics": ["accuracy"]},
    )
    m = ModelSummary(
        m.class_name,
        m.input_shape,
        m.output_shape,
        (LayerInfo("Embedding", None, None, (None, None, 32), 0, 10000), *m.layers[1:]),
        1,
        m.compile_config,
    )
    result = {r.id: r for r in run_checks(rubric, Evidence(model=m))}["check_architecture"]
    assert (result.score == 3) is ok, result.messages


def test_cnn_order_matters():
    rubric = load_rubric("lab4_mnist_cnn")
    # Pooling before any convolution: the pattern Conv2D -> pooling -> Flatten is not there.
    m = model(
        ("MaxPooling2D", None, None),
        ("Flatten", None, None),
        ("Conv2D", 32, "relu"),
        ("Dense", 10, "softmax"),
        input_shape=(28, 28, 1),
        params=1,
    )
    result = {r.id: r for r in run_checks(rubric, Evidence(model=m))}["check_architecture"]
    assert result.score == 0
    assert result.messages[0].startswith("no MaxPooling2D/AveragePooling2D layer where the lab")


# --- variants and conceptual errors (the rubric's costs) -------------------------------------


def _layer(kind: str, shape: tuple, units=None, activation=None, params=0) -> LayerInfo:
    return LayerInfo(kind, units, activation, (None, *shape), params)


def _with_front(front: list[LayerInfo], input_shape: tuple, extra_params: int = 0) -> ModelSummary:
    core = (
        _layer("Dense", (512,), 512, "relu", 401920),
        _layer("Dense", (10,), 10, "softmax", 5130),
    )
    return ModelSummary(
        "Sequential", input_shape, (None, 10), (*front, *core), 407050 + extra_params, COMPILE
    )


def test_flatten_inside_the_model_is_an_accepted_variant():
    flat = _with_front([_layer("Flatten", (784,))], (28, 28))
    values = {**GOOD_ARRAYS, "train_images": arr((3000, 28, 28), "float32", 0.0, 1.0, True)}
    r = grade(evidence(model=flat, values=values))
    assert r["check_architecture"].score == 3
    assert (
        "inputs prepared inside the model first (Flatten): accepted"
        in r["check_architecture"].messages
    )
    assert r["check_inputs"].score == 1.5  # the rubric's share for arrays not as asked
    assert (
        "the model reshapes it itself (Flatten first), which works: accepted, less 0.5"
        in (r["check_inputs"].messages[0])
    )


def test_scaling_inside_the_model_is_an_accepted_variant():
    # Normalization's mean and variance are weights of its own: not the lab's parameters.
    front = [_layer("Rescaling", (784,)), _layer("Normalization", (784,), params=1569)]
    scaled = _with_front(front, (784,), extra_params=1569)
    values = {**GOOD_ARRAYS, "train_images": arr((3000, 784), "float32", 0.0, 255.0, True)}
    r = grade(evidence(model=scaled, values=values))
    assert r["check_architecture"].score == 3
    assert r["check_inputs"].score == 1.5
    assert (
        "the model scales them itself (Rescaling first), which works"
        in (r["check_inputs"].messages[0])
    )
    # Raw pixels with no scaling anywhere: the conceptual error, half of the check.
    r = grade(evidence(values=values))
    assert r["check_inputs"].score == 1.0
    assert "(a conceptual error this lab teaches: 1 of 2 points)" in r["check_inputs"].messages[0]


def test_a_loss_that_does_not_match_the_output_costs_half():
    wrong = {**COMPILE, "loss": "binary_crossentropy"}
    r = grade(
        evidence(
            model=model(("Dense", 512, "relu"), ("Dense", 10, "softmax"), compile_config=wrong)
        )
    )
    assert r["check_compile"].score == 0.5
    assert "does not match the network's output and the labels" in r["check_compile"].messages[0]
    sparse = {**COMPILE, "loss": "sparse_categorical_crossentropy"}
    r = grade(
        evidence(
            model=model(("Dense", 512, "relu"), ("Dense", 10, "softmax"), compile_config=sparse)
        )
    )
    assert r["check_compile"].score == 1  # integer labels with the sparse loss: accepted


def test_channels_first_and_short_sequences_are_conceptual_errors():
    cnn = load_rubric("lab4_mnist_cnn").check("check_inputs")
    from autograder.grading.input_checks import check_inputs

    values = {
        "train_images": arr((3000, 1, 28, 28), "float32", 0.0, 1.0, True),
        "train_labels": arr((3000, 10), "float32", 0.0, 1.0, True),
    }
    r = check_inputs(cnn, Evidence(model=None, values=values))
    assert r.score == 1.0 and "conceptual error" in r.messages[0]
    rnn = load_rubric("lab5_imdb_rnn").check("check_inputs")
    short = {"input_train": arr((4000, 20), "int32", 0.0, 9999.0, True)}
    r = check_inputs(rnn, Evidence(model=None, values=short))
    assert r.score == 1.0 and "conceptual error" in r.messages[0]
    near = {"input_train": arr((4000, 400), "int32", 0.0, 9999.0, True)}
    assert check_inputs(rnn, Evidence(model=None, values=near)).score == 1.0  # shape: half


def test_normalisation_inside_the_model_counts_when_adapted_on_the_training_data():
    from autograder.grading.input_checks import check_normalisation

    check = load_rubric("lab3_boston_regression").check("check_normalisation")
    rng = np.random.default_rng(0)
    train, test = rng.normal(5, 2, (400, 13)), rng.normal(5.5, 2, (100, 13))
    values = {
        "train_data": {"column_mean": train.mean(0).tolist(), "column_std": train.std(0).tolist()},
        "test_data": {"column_mean": test.mean(0).tolist(), "column_std": test.std(0).tolist()},
    }
    reference = {
        "test_column_mean_with_train_stats": ((test - train.mean(0)) / train.std(0))
        .mean(0)
        .tolist(),
        "train_column_mean": train.mean(0).tolist(),
        "test_column_mean_raw": test.mean(0).tolist(),
    }
    adapted_on_train = {**reference, "model_normalization_mean": train.mean(0).tolist()}
    r = check_normalisation(check, Evidence(model=None, values=values, reference=adapted_on_train))
    assert r.score == 1.5 and "adapted on the training data), which works" in r.messages[0]
    # Adapted on the test data: the lab's conceptual error, not the variant.
    adapted_on_test = {**reference, "model_normalization_mean": test.mean(0).tolist()}
    r = check_normalisation(check, Evidence(model=None, values=values, reference=adapted_on_test))
    assert r.score == 0
    # No layer at all: raw arrays cost both parts.
    assert (
        check_normalisation(check, Evidence(model=None, values=values, reference=reference)).score
        == 0
    )
