"""How a check's findings become its score, shared by every kind of check.

A check looks at several aspects; each one that fails costs the rubric's share of the
check (``costs``), or an equal share. A failed aspect the rubric marks ``conceptual`` says
so in its message, with the points it cost.
"""

from __future__ import annotations

from autograder.rubric import Check

__all__ = ["conceptual_note", "score_fraction"]


def score_fraction(check: Check, parts: list[str], failed: list[str]) -> float:
    """What is left of the check once each failed aspect has cost its share: the rubric's
    ``costs``, else an equal share of the aspects checked."""
    costs = check.params.get("costs", {})
    default = 1.0 / max(1, len(parts))
    return max(0.0, 1.0 - sum(float(costs.get(a, default)) for a in dict.fromkeys(failed)))


def conceptual_note(check: Check, aspect: str) -> str:
    if aspect not in check.params.get("conceptual", ()):
        return ""
    share = float(check.params["costs"][aspect])
    lost = share * check.points
    points = "point" if check.points == 1 else "points"
    return f" (a conceptual error this lab teaches: {lost:g} of {check.points:g} {points})"
