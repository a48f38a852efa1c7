"""What a student's notebook calls: each visible check on the kernel's live objects.

The names here are what released notebooks import (``from autograder.checks import
self_check``); the checks themselves are :mod:`autograder.grading.checks`, the same code
that grades. Feedback only: nothing here decides a grade.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autograder.grading.capture import capture_source
from autograder.grading.checks import CHECKS
from autograder.grading.evaluate import evidence_from_capture
from autograder.grading.metrics import preview_metrics
from autograder.results import CheckResult
from autograder.rubric import load_rubric

__all__ = ["expected_total", "self_check"]

# The last result of each visible check run in this kernel: what the student last saw.
_SEEN: dict[tuple[str, str], CheckResult] = {}


def _check_in_kernel(lab: str, check_id: str, namespace: Mapping[str, Any]) -> CheckResult:
    """One rubric check on the kernel's live objects, with a metric previewed on the
    notebook's own test split."""
    rubric = load_rubric(lab)
    check = rubric.check(check_id)
    with tempfile.TemporaryDirectory(prefix="autograder-self-check-") as tmp:
        exec(capture_source(rubric, Path(tmp)), dict(namespace))
        model = namespace.get(rubric.model_variable)
        metrics: dict[str, float] = {}
        problems: dict[str, str] = {}
        if check.kind == "metric" and model is not None:
            metrics, problems = preview_metrics(rubric, model, namespace)
        ev = evidence_from_capture(rubric, Path(tmp), metrics=metrics, problems=problems)
    result = CHECKS[check.kind](check, ev)
    _SEEN[(lab, check_id)] = result
    return result


def self_check(lab: str, check_id: str, namespace: Mapping[str, Any]) -> CheckResult:
    """Run one rubric check in the student's kernel on live objects, for feedback only.

    Raises ``AssertionError`` with the check's messages when it does not pass, as a visible
    nbgrader test does. The held-out data is not available here: a metric check previews
    the student's own test split, never the grade.
    """
    result = _check_in_kernel(lab, check_id, namespace)
    print(f"[{result.status}] {result.title}: {result.score:g}/{result.points:g}")
    for m in result.messages:
        print(f"  - {m}")
    if result.status != "pass":
        raise AssertionError("; ".join(result.messages))
    return result


def expected_total(lab: str, namespace: Mapping[str, Any]) -> float:
    """The notebook's last cell: what the automatic checks give, and what is left to the
    instructor. Each check counts as its visible cell last showed it (nothing is computed
    twice); a check whose cell has not run is run here, on the live objects."""
    rubric = load_rubric(lab)
    rows = []
    for check in rubric.checks:
        seen = _SEEN.get((lab, check.id))
        if seen is not None:
            result = seen
        else:
            try:
                result = _check_in_kernel(lab, check.id, namespace)
            except Exception as exc:  # a broken notebook still gets its table
                result = CheckResult.failed(check, f"{type(exc).__name__}: {exc}")
        rows.append(result)
    total = sum(r.score for r in rows)
    width = max(len(r.title) for r in rows)
    print("Expected from the automatic checks (accuracy previewed on your test split; the")
    print("grade uses held-out data the notebook never sees):")
    for r in rows:
        mark = "~" if r.kind == "metric" else " "
        print(f"  {r.title:<{width}}  {mark}{r.score:g} / {r.points:g}")
    print(
        f"  {'automatic total':<{width}}  {mark if any(r.kind == 'metric' for r in rows) else ' '}"
        f"{total:g} / {rubric.total_points:g}"
    )
    if rubric.manual:
        parts = ", ".join(f"{m.title} ({m.points:g} points)" for m in rubric.manual)
        manual = sum(m.points for m in rubric.manual)
        print(f"Left to the instructor: {parts}, graded by hand; {manual:g} more points.")
    else:
        print("Nothing is left to the instructor: every point is graded automatically.")
    return total
