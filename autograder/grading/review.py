"""Flags for an instructor's review: figures that say a grade may not mean what it says.

A flag never changes a score and never reaches the student's view: it marks the
submission in nbgrader's gradebook (``flagged``, as the formgrader's own flag does), and the
reasons, with their figures, go to the gradebook table, the exports and the batch report.

Two kinds, both computed in the clean evaluation process:

- **Memorisation.** The data sets are public, so a student can bring the originals and train
  on the held-out examples. The held-out score is then far better than the same model's
  score on its own test split or validation data (trained on the held-out half only), or
  beyond anything the reference solution reaches on that data (trained on the whole
  original test split: both scores rise, the ceiling catches it). Both bounds are
  calibrated from the reference runs (``autograder calibrate``) and kept in the rubric.
- **Training record.** What the kernel reports about training (the fit() record, the
  model's history) is checked against what the saved model carries: the optimizer's
  iteration count must be what the recorded fit() calls ran.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from autograder.rubric import Threshold

__all__ = ["WITNESSES", "memorisation", "training_record"]

# The model's other scores, computed or recorded outside the held-out data: the grader's own
# evaluation on the public test split, and the last validation score fit() recorded.
WITNESSES = {"test": "its own test split", "validation": "its validation data"}


def memorisation(
    threshold: Threshold, metric: str, heldout: float, witnesses: Mapping[str, float]
) -> list[str]:
    """Reasons to review a held-out ``metric`` of ``heldout`` (empty: nothing unusual).

    None for a score at or past the threshold's ``zero``: it earns no points, so there is
    nothing a memorised held-out set could have bought, and a model that learned next to
    nothing (a constant prediction) differs between splits only by their labels."""
    if threshold.better_by(heldout, threshold.zero) <= 0:
        return []
    reasons = []
    beyond = threshold.review_beyond
    if beyond is not None and threshold.better_by(heldout, beyond) > 0:
        reasons.append(
            f"possible memorisation: held-out {metric} {heldout:.4g} is beyond anything the "
            f"reference reaches on this data ({beyond:g} at best, with margin)"
        )
    for name, gap in (
        ("test", threshold.review_gap_test),
        ("validation", threshold.review_gap_validation),
    ):
        value = witnesses.get(name)
        if gap is None or value is None:
            continue
        better = threshold.better_by(heldout, value)
        if better > gap:
            reasons.append(
                f"possible memorisation: held-out {metric} {heldout:.4g} is {better:.3g} better "
                f"than on {WITNESSES[name]} ({value:.4g}); the reference's gap stays within "
                f"{gap:g}"
            )
    return reasons


def _steps(call: Mapping[str, Any]) -> int | None:
    epochs, steps = call.get("epochs_run"), call.get("steps")
    if not isinstance(epochs, int) or not isinstance(steps, int) or steps <= 0:
        return None  # a fit() that raised, or data of unknown length: nothing to compare
    return epochs * steps


def training_record(
    model_var: str,
    fit_calls: Sequence[Mapping[str, Any]] | None,
    history: Mapping[str, Sequence[float]],
    iterations: int | None,
) -> list[str]:
    """Reasons to review the training evidence of the graded model.

    ``fit_calls``: the recorder's calls (None: the record was removed); ``history``: the
    graded model's ``model.history``; ``iterations``: the saved optimizer's step count
    (None: no optimizer was saved)."""
    if fit_calls is None:
        if history or iterations:
            return [
                "training record missing: the grader's record of fit() calls was removed "
                "in the notebook, so what trained the model cannot be checked"
            ]
        return []
    calls = [c for c in fit_calls if c.get("graded_model")]
    reasons = []
    epochs_in_history = len(next(iter(history.values()), []))
    if history and calls:
        last_run = calls[-1].get("epochs_run")
        if isinstance(last_run, int) and last_run != epochs_in_history:
            reasons.append(
                f"training record mismatch: `{model_var}.history` holds {epochs_in_history} "
                f"epochs, but its last recorded fit() ran {last_run}"
            )
    elif history and not calls:
        reasons.append(
            f"training record mismatch: `{model_var}.history` holds {epochs_in_history} "
            "epochs, but no recorded fit() call trained this model"
        )
    if iterations is not None:
        steps = [_steps(c) for c in calls]
        if all(s is not None for s in steps):
            known = [s for s in steps if s is not None]
            # A compile() resets the count: at least the last call's steps, at most all.
            low, high = (known[-1] if known else 0), sum(known)
            if not low <= iterations <= high:
                ran = " + ".join(str(s) for s in known) or "0"
                reasons.append(
                    f"training record mismatch: the saved optimizer of `{model_var}` took "
                    f"{iterations} steps; the recorded fit() calls of this model ran {ran}"
                )
    return reasons
