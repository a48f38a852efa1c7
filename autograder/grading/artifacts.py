"""The files the student's kernel left for grading: checked before anything reads them,
then read with care.

Everything in the artifacts folder was written by code the student controls, so the
evaluator first checks what it can without reading a byte (:func:`files_problem`: regular
files within their sizes) and then the archives' tables of contents (:func:`artifacts_problem`:
member counts, unpacked size, compression ratio), and loads the model only after refusing
layers that would run code (:func:`load_model_safely`).
"""

from __future__ import annotations

import json
import re
import stat
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from autograder.grading.capture import CAPTURE_FILE, MODEL_FILE, SAMPLES_FILE
from autograder.rubric import Rubric

__all__ = [
    "MAX_BYTES",
    "artifacts_problem",
    "files_problem",
    "load_model_safely",
    "optimizer_iterations",
    "read_model_config",
    "read_samples",
    "short_error",
    "unsafe_layers",
]

# What the kernel may leave for the evaluator: far more than any lab's model needs (the
# largest, the CNN's, is a few MiB), far less than what would hurt the grader to read.
MAX_BYTES = {CAPTURE_FILE: 4 * 2**20, MODEL_FILE: 256 * 2**20, SAMPLES_FILE: 8 * 2**20}
_MAX_UNPACKED = 512 * 2**20  # the model archive's members, as declared (zipfile holds to it)
_MAX_MEMBERS = 1000
_MAX_RATIO = 100  # for members over 1 MiB: a higher one is a compression bomb


def artifacts_problem(artifacts: Path) -> str | None:
    """Why the files the kernel wrote must not be read, checked before any is: each one a
    regular file within its size, the model archive within its count, unpacked size and
    compression ratio of members. None when they may be read."""
    return files_problem(artifacts) or _archive_problem(artifacts)


def files_problem(artifacts: Path) -> str | None:
    """The part of :func:`artifacts_problem` that reads no file, only their metadata."""
    for name, cap in MAX_BYTES.items():
        try:
            st = (artifacts / name).lstat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"{name} cannot be read ({type(exc).__name__})"
        if not stat.S_ISREG(st.st_mode):
            return f"{name} is not a regular file"
        if st.st_size > cap:
            return f"{name} is {st.st_size / 2**20:.0f} MiB, over the {cap / 2**20:.0f} MiB allowed"
    return None


def _archive_problem(artifacts: Path) -> str | None:
    for name in (MODEL_FILE, SAMPLES_FILE):
        problem = _zip_problem(artifacts / name)
        if problem is not None:
            return problem
    return None


def _zip_problem(path: Path) -> str | None:
    name = path.name
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
    except (OSError, zipfile.BadZipFile):
        return None  # no archive, or a broken one: loading says so
    if len(members) > _MAX_MEMBERS:
        return f"{name} holds {len(members)} files, over the {_MAX_MEMBERS} allowed"
    unpacked = sum(m.file_size for m in members)
    if unpacked > _MAX_UNPACKED:
        return (
            f"{name} unpacks to {unpacked / 2**20:.0f} MiB, "
            f"over the {_MAX_UNPACKED / 2**20:.0f} MiB allowed"
        )
    for m in members:
        if m.file_size > 2**20 and m.file_size > _MAX_RATIO * max(1, m.compress_size):
            return f"{name} member {m.filename[:100]!r} is compressed over {_MAX_RATIO}:1"
    return None


def read_samples(artifacts: Path) -> dict[str, np.ndarray]:
    """The first rows of the prepared arrays the capture kept (``fit``, ``train``,
    ``test``); empty when there are none or they cannot be read."""
    path = artifacts / SAMPLES_FILE
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: np.asarray(npz[k]) for k in npz.files if k in ("fit", "train", "test")}
    except Exception:
        return {}


def read_model_config(path: Path) -> dict[str, Any]:
    """The model's config from a ``.keras`` archive, read as JSON: nothing is built."""
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("config.json"))


# Layers whose config carries Python code or bytecode.
_CODE_LAYERS = frozenset({"Lambda", "TFOpLambda", "SlicingOpLambda"})


def unsafe_layers(config: Any) -> list[str]:
    """Names of layers in a saved model config that would run code on load or call."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            cls = node.get("class_name")
            module = node.get("module")
            if isinstance(cls, str) and cls in _CODE_LAYERS:
                found.append(f"{cls} layer")
            elif isinstance(module, str) and module and not module.startswith("keras"):
                found.append(f"custom object {module}.{cls}")
            elif isinstance(node.get("registered_name"), str) and "|" in node["registered_name"]:
                found.append(f"custom object {node['registered_name']}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return sorted(set(found))


def load_model_safely(rubric: Rubric, artifacts: Path, problems: dict[str, str]) -> Any:
    """The saved model, loaded with keras' safe mode after refusing code-carrying layers.

    Returns ``None`` (with the reason in ``problems["model"]``) when it cannot be had.
    """
    mv = rubric.model_variable
    path = artifacts / MODEL_FILE
    if mv in problems:
        problems["model"] = problems[mv]
        return None
    if not path.is_file():
        problems["model"] = f"`{mv}` was not saved by the notebook"
        return None
    try:
        bad = unsafe_layers(read_model_config(path))
        if bad:
            problems["model"] = (
                f"`{mv}` contains {', '.join(bad)}: code-carrying layers are not accepted; "
                "use built-in Keras layers only"
            )
            return None
        import keras

        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        problems["model"] = f"`{mv}` could not be loaded safely: {short_error(exc)}"
        return None


def optimizer_iterations(path: Path) -> int | None:
    """The step count of the optimizer saved in a ``.keras`` archive (keras keeps it as the
    optimizer's first variable); None when there is none or it cannot be read."""
    import io

    import h5py

    try:
        with zipfile.ZipFile(path) as zf, h5py.File(io.BytesIO(zf.read("model.weights.h5"))) as f:
            var = f.get("optimizer/vars/0")
            if isinstance(var, h5py.Dataset) and var.shape == () and var.dtype.kind in "iu":
                return int(var[()])
    except Exception:
        return None
    return None


# Keras wraps a layer's error in lines that name the call and its arguments, and TensorFlow
# adds node names: neither tells the student anything.
_NOISE = re.compile(r"^(Exception encountered when calling|Arguments received by|•)")
_NODE = re.compile(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]|\x1b\[[0-9;]*m")


def short_error(exc: BaseException) -> str:
    """An exception in one line a student can read: its type and last meaningful line."""
    lines = [_NODE.sub("", ln).strip() for ln in str(exc).strip().splitlines()]
    kept = [ln for ln in lines if ln and not _NOISE.match(ln)]
    text = kept[-1] if kept else (lines[-1] if lines else "")
    return f"{type(exc).__name__}: {text}"[:300]
