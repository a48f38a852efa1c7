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

from .rubric import Rubric

__all__ = ["CAPTURE_FILE", "MODEL_FILE", "capture_source", "captured_variables"]

CAPTURE_FILE = "capture.json"
MODEL_FILE = "model.keras"

# Runs inside the student's kernel. Self-contained on purpose: it must not import the
# autograder package, which student code could have replaced in sys.modules.
_TEMPLATE = r"""
def _autograder_capture(ns, out, model_var, array_vars):
    import json, math, os
    report = {"missing": [], "errors": {}, "arrays": {}, "history": {}, "history_params": {}}
    os.makedirs(out, exist_ok=True)
    model = ns.get(model_var)
    if model is None:
        report["missing"].append(model_var)
    else:
        try:
            model.save(os.path.join(out, %(model_file)r))
        except Exception as exc:
            report["errors"][model_var] = "%%s: %%s" %% (type(exc).__name__, exc)
        hist = getattr(model, "history", None)
        try:
            report["history"] = {
                str(k): [float(v) for v in vals] for k, vals in dict(hist.history).items()
            }
            report["history_params"] = {str(k): v for k, v in dict(hist.params).items()
                                        if isinstance(v, (int, float, str))}
        except Exception:
            pass
    for name in array_vars:
        if name not in ns:
            report["missing"].append(name)
            continue
        try:
            import numpy as np
            arr = np.asarray(ns[name])
            numeric = arr.size > 0 and np.issubdtype(arr.dtype, np.number)
            report["arrays"][name] = {
                "shape": [int(d) for d in arr.shape],
                "dtype": str(arr.dtype),
                "min": float(np.nanmin(arr)) if numeric else None,
                "max": float(np.nanmax(arr)) if numeric else None,
                "finite": bool(np.isfinite(arr).all()) if numeric else True,
            }
        except Exception as exc:
            report["errors"][name] = "%%s: %%s" %% (type(exc).__name__, exc)
    with open(os.path.join(out, %(capture_file)r), "w") as f:
        json.dump(report, f)

_autograder_capture(globals(), %(out)r, %(model_var)r, %(arrays)r)
del _autograder_capture
"""


def captured_variables(rubric: Rubric) -> list[str]:
    """Array variables the rubric's checks look at, in rubric order."""
    names: list[str] = []
    for check in rubric.checks:
        for key in ("variable", "labels"):
            value = check.params.get(key)
            if isinstance(value, str) and value not in names:
                names.append(value)
    return names


def capture_source(rubric: Rubric, out: Path) -> str:
    """Code for the grader's own last cell: saves the model and array summaries to ``out``."""
    return _TEMPLATE % {
        "model_file": MODEL_FILE,
        "capture_file": CAPTURE_FILE,
        "out": str(out),
        "model_var": rubric.model_variable,
        "arrays": captured_variables(rubric),
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
