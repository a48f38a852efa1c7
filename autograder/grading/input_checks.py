"""The checks of how the notebook prepared its data: the input arrays and the normalisation.

Apart from :mod:`autograder.grading.checks` (which registers them) because they are most
of the hint-writing: each way an array can differ from the lab's (shape, channel axis,
padding, scaling, statistics) has its own fix to suggest, and some ways of preparing the
data inside the model are accepted at a cost.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autograder.grading.evidence import Evidence, ModelSummary, leading_preparation
from autograder.grading.preparation import shape_text
from autograder.grading.scoring import conceptual_note, score_fraction
from autograder.results import CheckResult
from autograder.rubric import Check

__all__ = ["check_inputs", "check_normalisation"]


# --- inputs -----------------------------------------------------------------------------


def _shape_ok(got: tuple[int, ...], want: list[int]) -> bool:
    return len(got) == len(want) and all(w == -1 or g == w for g, w in zip(got, want, strict=True))


def check_inputs(check: Check, ev: Evidence) -> CheckResult:
    p = check.params
    name = p["variable"]
    arr = ev.array(name)
    if arr is None:
        return CheckResult.failed(check, ev.missing(name, "an array"))
    if arr.dtype == "object":
        return CheckResult.failed(
            check,
            f"`{name}` is a list of sequences of different lengths, not a tensor: pad them "
            f"to one length with {_pad_call(name, p.get('shape'))}",
        )
    messages: list[str] = []
    parts: list[str] = []
    failed: list[str] = []
    front = _front_layers(ev.model)
    images = bool(p.get("scaled"))
    if "shape" in p:
        parts.append("shape")
        want = list(p["shape"])
        if not _shape_ok(arr.shape, want):
            aspect = _shape_aspect(arr.shape, want, ev.model, front, images=images)
            failed.append(aspect)
            if aspect == "reshaped_in_model":
                messages.append(
                    f"`{name}` has shape {shape_text(arr.shape)}, not the lab's "
                    f"{shape_text(tuple(want))}; the model reshapes it itself "
                    f"({', '.join(front)} first), which works" + _variant_cost(check, aspect)
                )
            else:
                hint = _shape_hint(name, arr.shape, want, images=images)
                messages.append(
                    f"`{name}` has shape {shape_text(arr.shape)}; expected "
                    f"{shape_text(tuple(want))}{hint}" + conceptual_note(check, aspect)
                )
    if "dtype" in p:
        allowed = [p["dtype"]] if isinstance(p["dtype"], str) else list(p["dtype"])
        parts.append("dtype")
        if arr.dtype not in allowed:
            failed.append("dtype")
            messages.append(
                f'`{name}` is {arr.dtype}; convert it with `{name} = {name}.astype("{allowed[0]}")`'
            )
    if "min" in p or "max" in p:
        lo, hi = p.get("min"), p.get("max")
        parts.append("range")
        problem = ""
        if arr.min is None or arr.max is None or not arr.finite:
            problem = f"`{name}` holds non-numeric or non-finite values"
        elif (lo is not None and arr.min < lo - 1e-6) or (hi is not None and arr.max > hi + 1e-6):
            scaled_inside = [t for t in front if t in ("Rescaling", "Normalization")]
            if images and scaled_inside:
                failed.append("scaled_in_model")
                messages.append(
                    f"`{name}` keeps values from {arr.min:g} to {arr.max:g}, not the lab's "
                    f"[{lo:g}, {hi:g}]; the model scales them itself ({scaled_inside[0]} "
                    "first), which works" + _variant_cost(check, "scaled_in_model")
                )
            else:
                hint = ""
                if images:
                    hint = (
                        f" (divide the pixel values by 255: "
                        f'`{name} = {name}.astype("float32") / 255`)'
                    )
                elif hi is not None and arr.max > hi and float(hi).is_integer():
                    # Integer codes above the range: word indices from a larger vocabulary.
                    hint = (
                        f" (keep only the {int(hi) + 1:,} most frequent words: load the data "
                        f"with `num_words={int(hi) + 1}`)"
                    )
                problem = (
                    f"`{name}` values range from {arr.min:g} to {arr.max:g}; they should lie in "
                    f"[{lo:g}, {hi:g}]{hint}"
                )
        elif images and hi is not None and arr.max < 0.5 * hi:
            problem = (
                f"`{name}` values only reach {arr.max:g}; scaled once they should reach about "
                f"{hi:g} (were they divided twice?)"
            )
        if problem:
            failed.append("range")
            messages.append(problem + conceptual_note(check, "range"))
    if "labels" in p:
        lab_name = p["labels"]
        labels = ev.array(lab_name)
        parts.append("labels")
        if labels is None:
            failed.append("labels")
            messages.append(ev.missing(lab_name, "an array"))
        elif "labels_shape" in p and not _shape_ok(labels.shape, p["labels_shape"]):
            failed.append("labels")
            want_labels = shape_text(tuple(p["labels_shape"]))
            classes = p["labels_shape"][-1]
            messages.append(
                f"`{lab_name}` has shape {shape_text(labels.shape)}; expected {want_labels}"
                + (
                    f" (one-hot encode them with to_categorical: `{lab_name} = "
                    f"keras.utils.to_categorical({lab_name}, {classes})`)"
                    if len(labels.shape) == 1
                    else ""
                )
            )
    if not messages:
        rng = f" in [{arr.min:g}, {arr.max:g}]" if arr.min is not None else ""
        messages.append(f"`{name}` is {shape_text(arr.shape)} {arr.dtype}{rng} as expected")
    return CheckResult.scored(check, score_fraction(check, parts, failed), messages)


def _front_layers(model: ModelSummary | None) -> list[str]:
    if model is None:
        return []
    return [layer.type for layer in model.layers[: leading_preparation(model)]]


def _shape_aspect(
    got: tuple[int, ...],
    want: list[int],
    model: ModelSummary | None,
    front: list[str],
    *,
    images: bool,
) -> str:
    """What a shape other than the lab's is: reshaping left to the model (accepted), the
    channel axis elsewhere, sequences of another length, or just another shape."""
    takes_it = model is not None and model.input_shape == tuple(got[1:])
    same_size = len(got) >= 2 and all(w > 0 for w in want[1:])
    same_size = same_size and int(np.prod(got[1:])) == int(np.prod(want[1:]))
    if images and takes_it and same_size and any(t in ("Flatten", "Reshape") for t in front):
        return "reshaped_in_model"
    if images and same_size and len(got) == len(want) == 4 and 1 in got[1:]:
        return "channel_axis"
    far = len(got) == len(want) == 2 and want[1] > 0 and abs(got[1] - want[1]) > want[1] / 2
    if not images and far:
        return "sequence_length"
    return "shape"


def _variant_cost(check: Check, aspect: str) -> str:
    share = float(check.params.get("costs", {}).get(aspect, 0.0))
    if not share:
        return ": accepted"
    lost = share * check.points
    return (
        f": accepted, less {lost:g} point{'s' if lost != 1 else ''} because the arrays are "
        "not prepared as the lab asks"
    )


def _pad_call(name: str, shape: Any) -> str:
    maxlen = shape[1] if isinstance(shape, list) and len(shape) == 2 and shape[1] > 0 else None
    return f"`{name} = pad_sequences({name}" + (f", maxlen={maxlen})`" if maxlen else ")`")


def _shape_hint(name: str, got: tuple[int, ...], want: list[int], *, images: bool) -> str:
    """What to change so that an array of shape ``got`` takes the lab's shape ``want``."""
    got_rest, want_rest = got[1:], want[1:]
    same_size = (
        len(got) >= 2
        and all(w > 0 for w in want_rest)
        and int(np.prod(got_rest)) == int(np.prod(want_rest))
    )
    if images and same_size:
        if len(got) == 3 and len(want) == 2:
            rows = " * ".join(map(str, got_rest))
            return (
                f" (one row of {rows} = {want_rest[0]} pixels per image): flatten the images "
                f"with `{name} = {name}.reshape((len({name}), {rows}))`, the test images likewise"
            )
        dims = ", ".join(map(str, want_rest))
        what = "add the channel axis last" if len(want) == len(got) + 1 else "reshape them"
        return (
            f" ({what}: `{name} = {name}.reshape((len({name}), {dims}))`, the test images likewise)"
        )
    if not images and len(want) == 2 and len(got) <= 2:
        return f" (pad or truncate every sequence to one length with {_pad_call(name, want)})"
    return ""


# --- normalisation with training statistics ---------------------------------------------


def check_normalisation(check: Check, ev: Evidence) -> CheckResult:
    """Training features at mean 0 / sd 1, and test features shifted by the *training* stats;
    or raw arrays and a model that standardises them itself with the training statistics
    (a Normalization layer adapted on the training data: accepted, at the rubric's share)."""
    p = check.params
    train, test = p["train_variable"], p["test_variable"]
    tr, te = ev.values.get(train, {}), ev.values.get(test, {})
    if "column_mean" not in tr:
        return CheckResult.failed(check, ev.missing(train, "a 2-D numeric array"))
    if "column_mean" not in te:
        return CheckResult.failed(check, ev.missing(test, "a 2-D numeric array"))
    messages = []
    failed = []
    tr_mean, tr_std = np.asarray(tr["column_mean"]), np.asarray(tr["column_std"])
    te_mean = np.asarray(te["column_mean"])
    train_ok = bool(np.all(np.abs(tr_mean) < 0.05) and np.all(np.abs(tr_std - 1) < 0.05))
    inside = _normalised_inside(ev, tr_mean, te_mean)
    if not train_ok and inside is not None:
        failed.append("normalised_in_model")
        messages.append(inside + _variant_cost(check, "normalised_in_model"))
        return CheckResult.scored(check, score_fraction(check, ["train", "test"], failed), messages)
    if not train_ok:
        failed.append("train")
        messages.append(
            f"`{train}` is not standardised: each feature should have mean 0 and standard "
            f"deviation 1: compute `mean = {train}.mean(axis=0)` and `std = {train}.std(axis=0)`, "
            f"then `{train} = ({train} - mean) / std`"
        )
    expected = ev.reference.get("test_column_mean_with_train_stats")
    if expected is None or len(expected) != len(te_mean):
        failed.append("test")
        messages.append(f"`{test}` does not have the lab's {len(expected or [])} features")
    elif not np.allclose(te_mean, expected, atol=0.02):
        failed.append("test")
        own = np.all(np.abs(te_mean) < 0.02)
        fix = f"`{test} = ({test} - mean) / std`, with `mean` and `std` computed on `{train}`"
        messages.append(
            (
                f"`{test}` was normalised with its own mean and sd; use the training set's: "
                f"{fix} (the test data must not influence preprocessing)"
                if own
                else f"`{test}` is not normalised with the training set's mean and sd: use {fix}"
            )
            + conceptual_note(check, "test")
        )
    if not messages:
        messages.append("features standardised with the training set's mean and sd")
    return CheckResult.scored(check, score_fraction(check, ["train", "test"], failed), messages)


def _normalised_inside(ev: Evidence, tr_mean: np.ndarray, te_mean: np.ndarray) -> str | None:
    """What to tell a student whose model standardises raw arrays itself with the training
    set's statistics; None when it does not (or not with those)."""
    inside = ev.reference.get("model_normalization_mean")
    train_raw = ev.reference.get("train_column_mean")
    test_raw = ev.reference.get("test_column_mean_raw")
    if inside is None or train_raw is None or test_raw is None:
        return None
    inside, train_raw, test_raw = (np.asarray(v) for v in (inside, train_raw, test_raw))
    if not (inside.shape == train_raw.shape == tr_mean.shape == te_mean.shape):
        return None
    scale = np.maximum(1.0, np.abs(train_raw))
    adapted_on_train = bool(np.all(np.abs(inside - train_raw) <= 1e-3 * scale))
    raw_arrays = bool(
        np.all(np.abs(tr_mean - train_raw) <= 1e-3 * scale)
        and np.all(np.abs(te_mean - test_raw) <= 1e-3 * np.maximum(1.0, np.abs(test_raw)))
    )
    if not (adapted_on_train and raw_arrays):
        return None
    return (
        "the arrays stay raw and the model standardises them itself (a Normalization layer "
        "adapted on the training data), which works"
    )
