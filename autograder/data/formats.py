"""The staged data's storage format, in one place for both sides: what
:mod:`autograder.data.staging` writes and :mod:`autograder.data.loaders` reads.

Each staged folder (``keras/``, ``public/``, ``heldout/``) holds ``.npz`` files and a
``manifest.json`` whose ``datasets`` entries record source, counts and the sha256 of every file;
files are written atomically (a student may load while the grader restages). IMDB sequences are
stored as one flat int32 array plus int64 offsets, so nothing staged ever needs unpickling.

Imported by the students' loaders, so it is readable from a student's kernel: it holds no
part of the held-out choice (that is :mod:`autograder.data.split`, grader only).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "IMDB_INDEX_FROM",
    "IMDB_OOV",
    "IMDB_START",
    "Array",
    "atomic",
    "digest",
    "entry_valid",
    "file_entries",
    "now",
    "object_array",
    "pack",
    "read_manifest",
    "save_npz",
    "unpack",
    "update_manifest",
    "write_json",
]

# Bumped whenever what stage() writes changes, so old staging is rebuilt rather than trusted.
# 2: the held-out half chosen with the data folder's secret key (1: keras' second half).
FORMAT_VERSION: Final = 2

# keras.datasets.imdb.load_data() defaults; stored IMDB data is its output with these.
IMDB_START: Final = 1
IMDB_OOV: Final = 2
IMDB_INDEX_FROM: Final = 3

Array = np.ndarray


# --------------------------------------------------------------------------- files


def digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic(path: Path) -> Iterator[Path]:
    # Write next to the target and rename, so a crash or a concurrent reader never sees half a
    # file (students may load while the grader restages).
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_npz(path: Path, **arrays: Any) -> None:
    with atomic(path) as tmp, tmp.open("wb") as f:  # a file object: no ".npz" appended
        np.savez_compressed(f, **arrays)


def write_json(path: Path, obj: Any) -> None:
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- manifests


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return {"datasets": {}}
    if not isinstance(manifest, dict) or not isinstance(manifest.get("datasets"), dict):
        return {"datasets": {}}
    return manifest


def update_manifest(folder: Path, name: str, entry: dict[str, Any]) -> None:
    manifest = read_manifest(folder)
    manifest["datasets"][name] = entry
    manifest["format"] = FORMAT_VERSION
    manifest["updated_at"] = now()
    write_json(folder / "manifest.json", manifest)


def file_entries(folder: Path, fnames: Sequence[str]) -> dict[str, dict[str, Any]]:
    return {f: {"sha256": digest(folder / f), "bytes": (folder / f).stat().st_size} for f in fnames}


def entry_valid(folder: Path, entry: Any) -> bool:
    """A manifest entry of the current format whose files are all there, unchanged."""
    if not isinstance(entry, dict) or entry.get("format") != FORMAT_VERSION:
        return False
    files = entry.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for fname, info in files.items():
        path = folder / fname
        if not path.is_file() or digest(path) != info.get("sha256"):
            return False
    return True


# --------------------------------------------------------------------------- IMDB sequences


def pack(seqs: Sequence[Sequence[int]]) -> tuple[Array, Array]:
    """Sequences as one flat int32 array and int64 offsets (sequence i: ``[o[i], o[i+1])``)."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = itertools.chain.from_iterable(seqs)
    return np.fromiter(flat, dtype=np.int32, count=int(offsets[-1])), offsets


def unpack(values: Array, offsets: Array) -> list[list[int]]:
    """What :func:`pack` packed, as lists of Python ints."""
    flat, bounds = values.tolist(), offsets.tolist()
    return [flat[a:b] for a, b in itertools.pairwise(bounds)]


def object_array(seqs: Sequence[list[int]]) -> Array:
    """A 1-D object array of the sequences, as keras' imdb loader returns them."""
    # Element by element: np.array(seqs, dtype=object) turns equal-length lists into a 2-D array.
    out = np.empty(len(seqs), dtype=object)
    for i, seq in enumerate(seqs):
        out[i] = seq
    return out
