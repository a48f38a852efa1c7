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
  An accuracy gap is never held to less than chance allows: the splits are samples (the
  test split's witness 1,000 examples at most, the validation data as fit() split it),
  and a handful of reference runs cannot show how far a correct model's two scores may
  drift apart by sampling alone.
- **Training record.** What the kernel reports about training (the fit() record, the
  model's history) is checked against what the saved model carries: the optimizer's
  iteration count must be what the recorded fit() calls ran.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from autograder.rubric import Threshold

__all__ = ["SAMPLING_Z", "WITNESSES", "memorisation", "sampling_gap", "training_record"]

# The model's other scores, computed or recorded outside the held-out data: the grader's own
# evaluation on the public test split, and the last validation score fit() recorded.
WITNESSES = {"test": "its own test split", "validation": "its validation data"}


# Standard deviations of sampling noise an accuracy gap may reach before it is flagged:
# one-sided, a correct model crosses 4 by chance once in about 30,000 gradings.
SAMPLING_Z = 4.0


def sampling_gap(accuracy: float, examples: int, other_examples: int) -> float:
    """The accuracy gap between two independent samples of ``examples`` and
    ``other_examples`` that a model of ``accuracy`` reaches by chance at ``SAMPLING_Z``
    standard deviations (binomial: the difference of two proportions)."""
    p = min(max(accuracy, 0.0), 1.0)
    return SAMPLING_Z * math.sqrt(p * (1 - p) * (1 / examples + 1 / other_examples))


def memorisation(
    threshold: Threshold,
    metric: str,
    heldout: float,
    witnesses: Mapping[str, float],
    heldout_examples: int | None = None,
) -> list[str]:
    """Reasons to review a held-out ``metric`` of ``heldout`` (empty: nothing unusual).

    None for a score at or past the threshold's ``zero``: it earns no points, so there is
    nothing a memorised held-out set could have bought, and a model that learned next to
    nothing (a constant prediction) differs between splits only by their labels.

    ``witnesses`` may carry ``test_examples`` and ``validation_examples``, the sizes of
    those samples; with ``heldout_examples``, an accuracy gap to one is held to the larger
    of the rubric's bound and :func:`sampling_gap`."""
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
        chance = _chance(metric, name, heldout, value, witnesses, heldout_examples)
        if better > max(gap, chance):
            bound = f"the reference's gap stays within {gap:g}"
            if chance > gap:
                bound = f"chance on samples of this size stays within {chance:.3g}"
            reasons.append(
                f"possible memorisation: held-out {metric} {heldout:.4g} is {better:.3g} better "
                f"than on {WITNESSES[name]} ({value:.4g}); {bound}"
            )
    return reasons


def _chance(
    metric: str,
    name: str,
    heldout: float,
    value: float,
    witnesses: Mapping[str, float],
    heldout_examples: int | None,
) -> float:
    """The sampling floor for one witness's gap; 0 for an error metric (no binomial
    noise) and where a size is unknown (no fit() record of the validation data's, a
    result stored before sizes were)."""
    examples = witnesses.get(f"{name}_examples")
    if metric != "accuracy" or not examples or not heldout_examples:
        return 0.0
    n, m = int(examples), int(heldout_examples)
    pooled = (heldout * m + value * n) / (m + n)
    return sampling_gap(pooled, m, n)


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
