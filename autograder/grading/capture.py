"""Capture the trained model and array summaries from the student's kernel.

The grader appends one cell of its own after the student's notebook has run; that cell
saves what the checks need into an artifacts folder, and everything else (loading the
model, the held-out evaluation, scoring) happens in a separate, clean process. Nothing a
student's code does to its own kernel can change the held-out accuracy: the worst it can
do is spoil the capture, which scores zero with a reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autograder.grading.preparation import SAMPLE_ROWS
from autograder.rubric import VARIABLE_PARAMS, Rubric

__all__ = [
    "CAPTURE_FILE",
    "FIT_RECORDER_SOURCE",
    "MODEL_FILE",
    "SAMPLES_FILE",
    "capture_source",
    "captured_variables",
]

CAPTURE_FILE = "capture.json"
MODEL_FILE = "model.keras"
SAMPLES_FILE = "samples.npz"

# Runs silently in the student's kernel before its first cell: every Model.fit() call is
# recorded with what it received (callbacks inline or from a variable, epochs, batch size),
# how many epochs and steps it ran and the final figures it returned, in a module of its own
# so that the notebook's names do not reach it by accident. Code in the kernel can still undo
# or forge it (see the README).
FIT_RECORDER_SOURCE = r"""
def _autograder_record_fits():
    import functools, inspect, math, sys, types
    import keras
    record = types.ModuleType("_autograder_fits")
    record.calls = []
    record.samples = {}  # call index -> the first rows of the inputs it received
    sys.modules["_autograder_fits"] = record
    original = keras.Model.fit
    signature = inspect.signature(original)

    @functools.wraps(original)
    def fit(self, *args, **kwargs):
        try:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            given = bound.arguments
            callbacks = given.get("callbacks") or []
            if not isinstance(callbacks, (list, tuple)):
                callbacks = [callbacks]
            call = {
                "model_id": id(self),
                "callbacks": [type(c).__name__ for c in callbacks][:20],
                "epochs": given.get("epochs"),
                "batch_size": given.get("batch_size"),
                "validation": bool(given.get("validation_split") or
                                   given.get("validation_data") is not None),
            }
            x = given.get("x")
            # how many examples the validation score is measured on, as keras splits them
            split, data = given.get("validation_split"), given.get("validation_data")
            if isinstance(data, (tuple, list)) and data and hasattr(data[0], "__len__"):
                call["validation_examples"] = len(data[0])
            elif isinstance(split, float) and 0 < split < 1 and hasattr(x, "shape"):
                n = int(x.shape[0])
                call["validation_examples"] = n - int(math.floor(n * (1.0 - split)))
            call = {k: v for k, v in call.items() if isinstance(v, (int, float, str, list, bool))}
            if len(record.samples) < 5 and hasattr(x, "shape") and hasattr(x, "dtype"):
                # the form the model is trained in, for the grader to prepare held-out data
                import numpy
                record.samples[len(record.calls)] = numpy.array(x[:%(rows)d])
                call["x_shape"] = [int(d) for d in x.shape]
        except Exception as exc:
            call = {"error": "%%s: %%s" %% (type(exc).__name__, exc)}
        if len(record.calls) < 100:
            record.calls.append(call)
        history = original(self, *args, **kwargs)
        try:
            call["epochs_run"] = len(history.epoch)
            call["steps"] = int(history.params.get("steps") or 0)
            # The last value of each series: a History shown as this call's can be matched.
            call["final"] = {str(k): float(v[-1]) for k, v in list(history.history.items())[:20]
                             if len(v)}
        except Exception:
            pass
        return history

    keras.Model.fit = fit

_autograder_record_fits()
del _autograder_record_fits
""" % {"rows": SAMPLE_ROWS}  # noqa: UP031  (the template's own code uses % formatting)

# Runs inside the student's kernel. Self-contained on purpose: it must not import the
# autograder package, which student code could have replaced in sys.modules.
_TEMPLATE = r"""
def _autograder_capture(ns, out, model_var, names, samples_of, rows):
    import json, os
    import numpy as np
    report = {"missing": [], "errors": {}, "values": {}, "callbacks": [],
              "history": {}, "history_params": {}}
    os.makedirs(out, exist_ok=True)

    def history_of(obj):
        return ({str(k): [float(v) for v in vals] for k, vals in dict(obj.history).items()},
                {str(k): v for k, v in dict(getattr(obj, "params", {}) or {}).items()
                 if isinstance(v, (int, float, str))})

    def describe(value):
        if hasattr(value, "history") and hasattr(value, "params") and not hasattr(value, "layers"):
            h, p = history_of(value)
            return {"type": "history", "history": h, "params": p}
        if isinstance(value, (bool, int, float)):
            return {"type": "number", "value": float(value)}
        if hasattr(value, "to_dict") and hasattr(value, "columns"):
            value = value.to_dict()
        if isinstance(value, dict):
            flat = {}
            for k, v in list(value.items())[:50]:
                if isinstance(v, dict):
                    v = list(v.values())[-1] if v else None
                try:
                    flat[str(k)] = float(v)
                except (TypeError, ValueError):
                    flat[str(k)] = None
            return {"type": "mapping", "value": flat}
        arr = np.asarray(value)
        numeric = arr.size > 0 and np.issubdtype(arr.dtype, np.number)
        lo = hi = None
        finite = True
        if numeric and arr.dtype.kind in "iuf":
            # A NaN or an infinity shows in the min or the max: two passes, not three.
            lo, hi = arr.min(), arr.max()
            finite = bool(np.isfinite(lo) and np.isfinite(hi))
            if np.isnan(lo) or np.isnan(hi):
                lo, hi = np.nanmin(arr), np.nanmax(arr)
        elif numeric:
            lo, hi, finite = np.nanmin(arr), np.nanmax(arr), bool(np.isfinite(arr).all())
        info = {
            "type": "array",
            "shape": [int(d) for d in arr.shape],
            "dtype": str(arr.dtype),
            "min": float(lo) if numeric else None,
            "max": float(hi) if numeric else None,
            "finite": finite,
        }
        if numeric and arr.ndim == 2 and arr.shape[1] <= 64:
            col = arr.astype("float64")
            info["column_mean"] = [float(v) for v in col.mean(axis=0)]
            info["column_std"] = [float(v) for v in col.std(axis=0)]
        return info

    model = ns.get(model_var)
    if model is None:
        report["missing"].append(model_var)
    else:
        try:
            model.save(os.path.join(out, %(model_file)r))
        except Exception as exc:
            report["errors"][model_var] = "%%s: %%s" %% (type(exc).__name__, exc)
        try:
            report["history"], report["history_params"] = history_of(model.history)
        except Exception:
            pass
    for name in names:
        if name not in ns:
            report["missing"].append(name)
            continue
        try:
            report["values"][name] = describe(ns[name])
        except Exception as exc:
            report["errors"][name] = "%%s: %%s" %% (type(exc).__name__, exc)
    # Callbacks: a callback passed to fit() has had its model set by keras.
    seen = set()
    for key, value in list(ns.items()):
        if key.startswith("_"):
            continue
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            cls = type(item)
            if id(item) in seen or not any(c.__name__ == "Callback" for c in cls.__mro__):
                continue
            seen.add(id(item))
            if cls.__name__ in ("History", "ProgbarLogger"):
                continue
            report["callbacks"].append(
                {"class": cls.__name__, "used": getattr(item, "_model", None) is not None})
    # What each fit() received, from the recorder (absent: it was removed by the notebook).
    import sys
    record = sys.modules.get("_autograder_fits")
    calls = getattr(record, "calls", None)
    samples = {}
    if isinstance(calls, list):
        report["fit_calls"] = []
        for i, call in enumerate(calls[:100]):
            if isinstance(call, dict):
                call = dict(call)
                call["graded_model"] = model is not None and call.pop("model_id", None) == id(model)
                report["fit_calls"].append(call)
                given = getattr(record, "samples", {}).get(i)
                if call["graded_model"] and given is not None:
                    samples["fit"] = given  # the last fit() of the graded model
    # The first rows of the prepared arrays: the grader learns the preparation from them.
    for key, name in samples_of.items():
        try:
            samples[key] = np.asarray(ns[name][:rows])
        except Exception:
            pass
    samples = {k: v for k, v in samples.items()
               if isinstance(v, np.ndarray) and v.dtype.kind in "biuf" and v.ndim >= 1}
    if samples:
        np.savez(os.path.join(out, %(samples_file)r), **samples)
    with open(os.path.join(out, %(capture_file)r), "w") as f:
        json.dump(report, f)

_autograder_capture(globals(), %(out)r, %(model_var)r, %(names)r, %(samples_of)r, %(rows)d)
del _autograder_capture
"""


def captured_variables(rubric: Rubric) -> list[str]:
    """Variables of the notebook that the rubric's checks look at, in rubric order."""
    names: list[str] = []
    for check in rubric.checks:
        for key in VARIABLE_PARAMS:
            value = check.params.get(key)
            for name in [value] if isinstance(value, str) else value or []:
                if name not in names:
                    names.append(name)
    return names


def capture_source(rubric: Rubric, out: Path) -> str:
    """Code for the grader's own last cell: saves the model and array summaries to ``out``."""
    return _TEMPLATE % {
        "model_file": MODEL_FILE,
        "capture_file": CAPTURE_FILE,
        "out": str(out),
        "model_var": rubric.model_variable,
        "names": captured_variables(rubric),
        "samples_file": SAMPLES_FILE,
        "samples_of": dict(rubric.preprocess.learn_from),
        "rows": SAMPLE_ROWS,
    }


def read_capture(out: Path) -> dict[str, Any] | None:
    path = out / CAPTURE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
