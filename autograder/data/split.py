"""The held-out split: the data folder's secret key and the test examples it holds out.

``private/heldout.key`` (0600 in a 0700 folder) is 32 random bytes, made on first staging;
with it, :func:`heldout_indices` chooses which half of keras' test split is held out. Without
the key the choice cannot be recomputed from the public files or from this code.

Grader only: a student's kernel gets this module's files as empty ones
(:func:`autograder.data.staging.staging_code`) and cannot reach the key.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Final

import numpy as np

from autograder.errors import DataError

__all__ = ["SPLIT_KEY_FILE", "heldout_indices", "split_id", "split_key"]

SPLIT_KEY_FILE: Final = Path("private") / "heldout.key"
_KEY_BYTES: Final = 32


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
