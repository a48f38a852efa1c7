"""The course data sets as students load them: ``public/`` only, never the network.

:mod:`autograder.data.staging` (the grader's side) puts every data set under :func:`data_dir` in
``keras/`` (offline mirrors in keras' formats), ``public/`` (what students load: keras'
own ``load_data()`` output with half of the test split) and ``heldout/`` (the other half,
chosen with the data folder's secret key: grader only). The loaders here read only staged
files: ``load_*`` read ``public/``; :func:`load_heldout` (grader only) reads ``heldout/``,
which a student's kernel cannot reach. They never import keras (importing TensorFlow takes
seconds) and never unpickle: IMDB sequences are stored as one flat int32 array plus offsets
(the format: :mod:`autograder.data.formats`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from autograder.data.formats import (
    IMDB_INDEX_FROM,
    IMDB_OOV,
    IMDB_START,
    Array,
    object_array,
    read_manifest,
    unpack,
)
from autograder.errors import DataError
from autograder.settings import DATA_DIR_ENV, TRAIN_LIMIT_ENV

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "STAGE_COMMAND",
    "TRAIN_LIMIT_ENV",
    "DatasetMissing",
    "data_dir",
    "data_source",
    "grader_only_dirs",
    "keep_loaded",
    "load_boston_housing",
    "load_heldout",
    "load_imdb",
    "load_imdb_word_index",
    "load_mnist",
    "only_kept",
    "train_limit",
]

DATASETS: Final[tuple[str, ...]] = ("mnist", "boston_housing", "imdb")
STAGE_COMMAND: Final = "autograder stage-data"

_IMDB_KWARGS: Final = frozenset(
    {"num_words", "skip_top", "maxlen", "start_char", "oov_char", "index_from"}
)

Split = tuple[tuple[Array, Array], tuple[Array, Array]]


class DatasetMissing(DataError, RuntimeError):
    """A data set has not been staged (or was staged without it)."""

    def __init__(self, name: str, root: Path, hint: str = "") -> None:
        self.name = name
        message = (
            f"data set {name!r} is not staged in {root}; stage it with `{STAGE_COMMAND}` "
            "(or `python -m autograder.data.staging`)"
        )
        super().__init__(f"{message}. {hint}" if hint else message)


# --------------------------------------------------------------------------- locations


def data_dir() -> Path:
    """``$AUTOGRADER_DATA_DIR`` if set, else ``~/.autograder/data``."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".autograder" / "data"


def grader_only_dirs() -> list[Path]:
    """The staged folders that hold held-out examples or choose them, closed to students:
    ``heldout/``, ``keras/`` (the keras-format mirror, whose test split contains the held-out
    one) and ``private/`` (the key that chose the held-out half)."""
    return [data_dir() / "heldout", data_dir() / "keras", data_dir() / "private"]


# --------------------------------------------------------------------------- loaders


def _staged_file(name: str, folder: str) -> Path:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {list(DATASETS)}")
    root = data_dir()
    path = root / folder / f"{name}.npz"
    if not path.is_file():
        hint = "IMDB also needs the aclImdb archive (--imdb-archive)." if name == "imdb" else ""
        raise DatasetMissing(name, root, hint)
    return path


# Decoded arrays kept by a long-lived grading process (see keep_loaded), keyed by file and
# checked against its size and mtime, so a restaged file is read again.
_KEPT: dict[Path, tuple[tuple[int, int], dict[str, Array]]] | None = None


_SOURCES: dict[str, str] = {}  # data_source() answers, kept with the arrays
_KEPT_ONLY = False


def keep_loaded() -> None:
    """Keep decoded data sets in this process (an evaluator that forks per submission loads
    each file once; its children share the arrays copy-on-write)."""
    global _KEPT
    if _KEPT is None:
        _KEPT = {}


def only_kept() -> None:
    """From now on answer from what :func:`keep_loaded` kept, without touching the data
    folder: an evaluation child that gave up the grader's account can no longer read it."""
    global _KEPT_ONLY
    keep_loaded()
    _KEPT_ONLY = True


def _load(name: str, folder: str) -> dict[str, Array]:
    if _KEPT_ONLY:
        assert _KEPT is not None
        kept = _KEPT.get(data_dir() / folder / f"{name}.npz")
        if kept is None:
            raise DatasetMissing(name, data_dir(), "It was not loaded before the evaluation.")
        return dict(kept[1])
    path = _staged_file(name, folder)
    stat = path.stat()
    signature = (stat.st_size, stat.st_mtime_ns)
    if _KEPT is not None and path in _KEPT and _KEPT[path][0] == signature:
        return dict(_KEPT[path][1])
    # allow_pickle=False: nothing we stage needs pickle, so a tampered file cannot run code.
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    if _KEPT is not None:
        for array in arrays.values():
            array.flags.writeable = False  # shared by every evaluation
        _KEPT[path] = (signature, arrays)
    return dict(arrays)


def train_limit(name: str) -> int | None:
    """The cap for ``name`` from ``$AUTOGRADER_TRAIN_LIMIT`` (``imdb=2000,...``).

    Quick runs (the test suite, the demo, quick calibrations) train on the first N training
    examples and see the first N of the public test split (the notebook's own evaluation
    and preview; the held-out split is never capped by it); the cap is part of the data
    source, so such runs are held to thresholds of their own.
    """
    for item in os.environ.get(TRAIN_LIMIT_ENV, "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == name and value.strip():
            try:
                limit = int(value)
            except ValueError:
                raise DataError(f"{TRAIN_LIMIT_ENV}: '{item}' is not name=count") from None
            if limit <= 0:
                raise DataError(f"{TRAIN_LIMIT_ENV}: the count for {name} must be positive")
            return limit
    return None


def _limited(name: str, split: Split) -> Split:
    limit = train_limit(name)
    if limit is None:
        return split
    (x, y), (tx, ty) = split
    return (x[:limit], y[:limit]), (tx[:limit], ty[:limit])


def data_source(name: str) -> str:
    """Where the staged ``name`` came from: ``canonical`` or an ``offline*`` mirror, with
    ``@N`` appended when ``$AUTOGRADER_TRAIN_LIMIT`` caps its training set at N examples."""
    limit = train_limit(name)
    suffix = f"@{limit}" if limit is not None else ""
    if _KEPT_ONLY:
        if name not in _SOURCES:
            raise DatasetMissing(name, data_dir(), "It was not loaded before the evaluation.")
        return _SOURCES[name] + suffix
    _staged_file(name, "public")
    entry = read_manifest(data_dir() / "public")["datasets"].get(name)
    if not isinstance(entry, dict) or "source" not in entry:
        raise DatasetMissing(name, data_dir(), "Its manifest entry is missing.")
    _SOURCES[name] = str(entry["source"])
    return _SOURCES[name] + suffix


def load_mnist() -> Split:
    """Like ``keras.datasets.mnist.load_data()``: uint8 ``(n, 28, 28)`` images, uint8 labels."""
    d = _load("mnist", "public")
    return _limited("mnist", ((d["x_train"], d["y_train"]), (d["x_test"], d["y_test"])))


def load_boston_housing() -> Split:
    """Like ``keras.datasets.boston_housing.load_data()``: float64 ``(n, 13)``, ``(n,)``."""
    d = _load("boston_housing", "public")
    split = (d["x_train"], d["y_train"]), (d["x_test"], d["y_test"])
    return _limited("boston_housing", split)


def load_imdb(
    num_words: int | None = None,
    skip_top: int = 0,
    maxlen: int | None = None,
    start_char: int | None = 1,
    oov_char: int | None = 2,
    index_from: int = 3,
) -> Split:
    """Like ``keras.datasets.imdb.load_data()`` with the same arguments (``seed`` fixed, 113).

    ``x_*`` are 1-D object arrays of lists of ints, ``y_*`` int64 labels (1 = positive).
    """
    kwargs: dict[str, Any] = dict(
        num_words=num_words,
        skip_top=skip_top,
        maxlen=maxlen,
        start_char=start_char,
        oov_char=oov_char,
        index_from=index_from,
    )
    d = _load("imdb", "public")
    train = _imdb_view(d, d["x_train_values"], d["x_train_offsets"], d["y_train"], **kwargs)
    test = _imdb_view(d, d["x_test_values"], d["x_test_offsets"], d["y_test"], **kwargs)
    return _limited("imdb", (train, test))


def load_imdb_word_index() -> dict[str, int]:
    """Like ``keras.datasets.imdb.get_word_index()``: word -> rank (1 = most frequent)."""
    path = _staged_file("imdb", "public").with_name("imdb_word_index.json")
    if not path.is_file():
        raise DatasetMissing("imdb", data_dir(), "The word index file is missing.")
    index: dict[str, int] = json.loads(path.read_text())
    return index


def load_heldout(name: str, **kwargs: Any) -> tuple[Array, Array]:
    """Grader only: ``(x, y)``, the held-out half of keras' test split.

    Takes the same keyword arguments as the data set's loader (only IMDB has any), so that the
    held-out half is processed exactly like the student's half.
    """
    allowed = _IMDB_KWARGS if name == "imdb" else frozenset()
    extra = sorted(set(kwargs) - allowed)
    if extra:
        raise TypeError(f"load_heldout({name!r}) got unexpected keyword arguments {extra}")
    d = _load(name, "heldout")
    if name != "imdb":
        return d["x"], d["y"]
    params: dict[str, Any] = dict(
        num_words=None, skip_top=0, maxlen=None, start_char=1, oov_char=2, index_from=3
    )
    params.update(kwargs)
    return _imdb_view(d, d["x_values"], d["x_offsets"], d["y"], **params)


def _imdb_view(
    meta: Mapping[str, Array],
    values: Array,
    offsets: Array,
    labels: Array,
    *,
    num_words: int | None,
    skip_top: int,
    maxlen: int | None,
    start_char: int | None,
    oov_char: int | None,
    index_from: int,
) -> tuple[Array, Array]:
    """Redo keras' imdb.load_data() processing on one stored (default-processed) part.

    Same steps and truthiness tests as keras: prepend start_char and add index_from; drop
    sequences with ``len >= maxlen``; replace (or drop, if oov_char is None) indices outside
    ``[skip_top, num_words)``.
    """
    defaults = (num_words, skip_top, maxlen, start_char, oov_char, index_from)
    if defaults == (None, 0, None, IMDB_START, IMDB_OOV, IMDB_INDEX_FROM):
        return object_array(unpack(values, offsets)), labels

    raw_max = int(meta["raw_max"])
    first = np.zeros(len(values), dtype=bool)
    first[offsets[:-1][np.diff(offsets) > 0]] = True  # every stored sequence starts with 1
    raw = values[~first].astype(np.int64)
    raw = np.where(raw == IMDB_OOV, raw_max, raw - IMDB_INDEX_FROM)
    lengths = np.diff(offsets) - 1
    has_start = start_char is not None

    limit = None
    if maxlen:
        limit = maxlen - int(has_start)  # kept: len(sequence) < maxlen
        if int(meta["min_len_train"]) >= limit or int(meta["min_len_test"]) >= limit:
            raise ValueError(
                f"After filtering for sequences shorter than maxlen={maxlen}, "
                "no sequence was kept. Increase maxlen."
            )
        kept = lengths < limit
        raw = raw[np.repeat(kept, lengths)]
        lengths, labels = lengths[kept], labels[kept]

    words = raw + index_from
    if start_char is not None:
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        words = np.insert(words, starts, start_char)
        lengths = lengths + 1

    if not num_words:
        highest = raw_max
        if limit is not None:
            table = meta["table_lengths"]
            highest = int(meta["table_max"][np.searchsorted(table, limit, side="left") - 1])
        # keras: max over the kept sequences, start_char included.
        num_words = highest + index_from
        if start_char is not None:
            num_words = max(num_words, start_char)

    in_range = (words >= skip_top) & (words < num_words)
    if oov_char is not None:
        words = np.where(in_range, words, oov_char)
    else:
        owner = np.repeat(np.arange(len(lengths)), lengths)
        words = words[in_range]
        lengths = np.bincount(owner[in_range], minlength=len(lengths))
    bounds = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=bounds[1:])
    return object_array(unpack(words, bounds)), np.asarray(labels)
