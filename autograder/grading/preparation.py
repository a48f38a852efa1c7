"""The form the student's model was trained in, learned from the arrays the kernel held.

A correct solution may flatten or scale inside the model, pad on the other side, or scale
by another constant. The grader knows the raw public splits and the capture holds the
first rows of the student's prepared arrays (what fit() received, ``train_images`` and the
like), so it fits the transformation between them: a reshape by element count, an affine
map overall or per feature, a padding length and side. When the fitted transformation
reproduces the student's rows to within rounding, the held-out inputs are prepared the same
way; otherwise the lab's standard preparation is used, and the report says which.

Pure numpy (keras only to pad sequences), run in the evaluator on grader-side data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SAMPLE_ROWS", "Preparation", "learn_preparation", "shape_text"]

# Rows of each prepared array the capture keeps: enough to pin an affine map per feature
# (Boston's 13) or overall, small enough to stay far below the capture's size limit.
SAMPLE_ROWS = 128

# How close the student's rows must be to the fitted transformation: float32 rounding of
# values up to a few hundred, with room for (x - mean) / std computed in another order.
_RTOL = 1e-4
_ATOL = 1e-5

_BLOCK_ROWS = 1024


def shape_text(shape: tuple[Any, ...]) -> str:
    inner = ", ".join("n" if d is None or d == -1 else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


@dataclass(frozen=True)
class Preparation:
    """How raw inputs become the model's: pad, or flatten, then ``x * scale + offset``,
    then reshape to ``(n, *shape)`` and cast to ``dtype``."""

    shape: tuple[int, ...]
    dtype: str
    scale: tuple[float, ...] = (1.0,)  # one value, or one per feature
    offset: tuple[float, ...] = (0.0,)
    pad: tuple[int, str, str] | None = None  # maxlen, padding side, truncating side
    source: str = ""  # the array it was learned from

    def apply(self, x: Any) -> np.ndarray:
        if self.pad is not None:
            from keras.utils import pad_sequences

            maxlen, padding, truncating = self.pad
            out = pad_sequences(list(x), maxlen=maxlen, padding=padding, truncating=truncating)
            return out.astype(self.dtype)
        raw = np.asarray(x)
        flat = raw.reshape(len(raw), int(np.prod(raw.shape[1:])))  # no rows: still a width
        out = np.empty(flat.shape, dtype=self.dtype)
        scale, offset = np.asarray(self.scale), np.asarray(self.offset)
        # In float64 as before, a block of rows at a time: whole-array temporaries (80 MB
        # for 10,000 MNIST images) cost more in fresh pages than the arithmetic.
        for start in range(0, len(flat), _BLOCK_ROWS):
            block = flat[start : start + _BLOCK_ROWS].astype(np.float64)
            block *= scale
            block += offset
            out[start : start + _BLOCK_ROWS] = block
        return out.reshape((len(raw), *self.shape))

    def describe(self) -> str:
        what = f"{shape_text((None, *self.shape))} {self.dtype}"
        if self.pad is not None:
            maxlen, padding, truncating = self.pad
            what += f", padded to {maxlen} words (padding={padding}, truncating={truncating})"
        elif len(self.scale) > 1:
            what += ", each feature shifted and scaled"
        elif self.scale != (1.0,) or self.offset != (0.0,):
            a, b = self.scale[0], self.offset[0]
            inverse = 1 / a if a else 0.0
            if a != 1.0 and inverse and abs(inverse - round(inverse)) < 1e-3:
                what += f", values / {round(inverse)}"
            elif a != 1.0:
                what += f", values x {a:.6g}"
            if b:
                what += f" {'-' if b < 0 else '+'} {abs(b):.6g}"
        return what


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    if got.shape != want.shape:
        return False
    got = got.astype(np.float64)
    want = want.astype(np.float64)
    if not (np.isfinite(got).all() and np.isfinite(want).all()):
        return False
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    return bool(np.all(np.abs(got - want) <= _ATOL + _RTOL * scale))


def _learn_padding(raw: Any, prepared: np.ndarray, name: str) -> Preparation | str:
    from keras.utils import pad_sequences

    if prepared.ndim != 2 or not np.issubdtype(prepared.dtype, np.integer):
        return f"{name} is not a 2-D array of word indices"
    maxlen = int(prepared.shape[1])
    for padding in ("pre", "post"):
        for truncating in ("pre", "post"):
            padded = pad_sequences(list(raw), maxlen=maxlen, padding=padding, truncating=truncating)
            if np.array_equal(padded, prepared):
                dtype = str(prepared.dtype)
                return Preparation((maxlen,), dtype, pad=(maxlen, padding, truncating), source=name)
    return f"{name} is not the reviews padded or truncated to {maxlen} words"


def _learn_affine(raw: np.ndarray, prepared: np.ndarray, name: str) -> Preparation | str:
    r = raw.reshape(len(raw), -1).astype(np.float64)
    q = prepared.reshape(len(prepared), -1).astype(np.float64)
    if r.shape[1] != q.shape[1]:
        return f"{name} holds {q.shape[1]:,} values per example; the raw data has {r.shape[1]:,}"
    if not np.isfinite(q).all():
        return f"{name} holds non-finite values"
    shape = tuple(int(d) for d in prepared.shape[1:])
    dtype = str(prepared.dtype)
    # One map for every value (scaling pixels), then one per feature (standardising).
    var = r.var()
    if var > 0:
        a = float(((r - r.mean()) * (q - q.mean())).mean() / var)
        b = float(q.mean() - a * r.mean())
        # float noise of the fit, not a shift the student made
        b = 0.0 if abs(b) <= 1e-6 * max(1.0, abs(a) * float(np.abs(r).max())) else b
        prep = Preparation(shape, dtype, (a,), (b,), source=name)
        if _close(prep.apply(raw), prepared):
            return prep
    col_var = r.var(axis=0)
    varies = col_var > 0
    a_col = np.zeros(r.shape[1])
    a_col[varies] = ((r - r.mean(0)) * (q - q.mean(0))).mean(0)[varies] / col_var[varies]
    b_col = q.mean(0) - a_col * r.mean(0)
    prep = Preparation(shape, dtype, tuple(a_col.tolist()), tuple(b_col.tolist()), source=name)
    if _close(prep.apply(raw), prepared):
        return prep
    return f"{name} is not a reshaped, scaled or shifted copy of the raw data"


def learn_preparation(
    candidates: list[tuple[str, Any, np.ndarray]],
) -> tuple[Preparation | None, list[str]]:
    """The first transformation that reproduces a candidate's rows, and why others did not.

    Each candidate is (the array's name, the raw examples it was made from, the student's
    first prepared rows of it).
    """
    why: list[str] = []
    for name, raw, prepared in candidates:
        n = min(len(raw), len(prepared))
        if n == 0:
            continue
        raw, prepared = raw[:n], prepared[:n]
        try:
            sequences = np.asarray(raw).dtype == object
            found = (
                _learn_padding(raw, prepared, name)
                if sequences
                else _learn_affine(np.asarray(raw), prepared, name)
            )
        except Exception as exc:  # a strange array must not stop the grading
            found = f"{name} could not be compared with the raw data ({type(exc).__name__})"
        if isinstance(found, Preparation):
            return found, why
        why.append(found)
    return None, why
