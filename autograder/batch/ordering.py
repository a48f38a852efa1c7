"""In which order a batch hands a class's submissions to its workers: longest first.

Workers take the next submission as they come free, so a batch ends when its last
submissions do. Handed out in the order found (lab by lab, IMDB's minutes-long notebooks
last), a class ends on a few long notebooks while the other workers wait; longest first,
it ends on short ones (the longest-processing-time rule). How long a lab's notebooks run
is known before any of them runs: ``autograder calibrate`` records how long each reference
run took, per data source (``labs/<lab>.calibration.json``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import TypeVar

from autograder.rubric import load_calibration, load_rubric

__all__ = ["expected_seconds", "longest_first"]

T = TypeVar("T")


def expected_seconds(lab: str) -> float | None:
    """The mean time of ``lab``'s calibration runs on the data source staged here (the
    reference solution, graded end to end); None where that source was never calibrated
    or the data is not staged."""
    from autograder.data.loaders import data_source

    try:
        source = data_source(load_rubric(lab).dataset)
    except Exception:  # missing data is the submission's to report, not the order's
        return None
    runs = load_calibration(lab).get(source, {}).get("runs", [])
    seconds = [float(r["seconds"]) for r in runs if isinstance(r.get("seconds"), int | float)]
    return statistics.mean(seconds) if seconds else None


def longest_first(
    submissions: Sequence[T],
    lab_of: Callable[[T], str],
    cost: Callable[[str], float | None] = expected_seconds,
) -> list[T]:
    """``submissions`` with the labs expected to run longest first. A lab never measured
    comes before all others (it may be the longest); the order is stable, so a lab's
    submissions keep the order they were found in."""
    costs: dict[str, float | None] = {}
    for s in submissions:
        lab = lab_of(s)
        if lab not in costs:
            costs[lab] = cost(lab)

    def key(s: T) -> float:
        c = costs[lab_of(s)]
        return -float("inf") if c is None else -c

    return sorted(submissions, key=key)
