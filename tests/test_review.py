"""Flags for review: memorisation bounds and the training record, as pure functions, and the
rubric's bounds against the reference runs they were calibrated from."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from grading_helpers import calibration_runs

from autograder.authoring.calibrate import suggest_review
from autograder.errors import ConfigError
from autograder.grading.review import memorisation, sampling_gap, training_record
from autograder.rubric import Threshold, parse_rubric

ACCURACY = Threshold(0.87, 0.5, review_beyond=0.94, review_gap_test=0.06)
MAE = Threshold(4.8, 7.0, review_beyond=2.0, review_gap_test=1.5, review_gap_validation=1.0)
LAB3 = Path(__file__).resolve().parents[1] / "autograder" / "labs" / "lab3_mnist_dense.toml"


def test_an_ordinary_score_is_not_flagged():
    assert memorisation(ACCURACY, "accuracy", 0.92, {"test": 0.90}) == []
    assert memorisation(MAE, "mae", 3.5, {"test": 4.0, "validation": 3.0}) == []


def test_a_score_beyond_the_reference_is_flagged_with_the_figures():
    (reason,) = memorisation(ACCURACY, "accuracy", 0.99, {"test": 0.985})
    assert reason == (
        "possible memorisation: held-out accuracy 0.99 is beyond anything the reference "
        "reaches on this data (0.94 at best, with margin)"
    )
    # Lower is better for an error: beyond means below.
    assert "beyond anything" in memorisation(MAE, "mae", 1.2, {"test": 1.3})[0]


def test_a_held_out_score_far_better_than_the_models_own_is_flagged():
    (reason,) = memorisation(ACCURACY, "accuracy", 0.93, {"test": 0.85})
    assert "held-out accuracy 0.93 is 0.08 better than on its own test split (0.85)" in reason
    reasons = memorisation(MAE, "mae", 2.5, {"test": 4.5, "validation": 3.6})
    assert len(reasons) == 2 and "its validation data (3.6)" in reasons[1]
    # A witness missing, or a bound not calibrated: nothing to compare.
    assert memorisation(ACCURACY, "accuracy", 0.93, {}) == []
    assert memorisation(Threshold(0.87, 0.5), "accuracy", 0.999, {"test": 0.5}) == []


def test_a_gap_within_sampling_noise_is_not_flagged():
    """A correct model's two accuracies differ by sampling alone: on the test split's 1,000
    examples against the 2,500 held-out reviews lab 5 scores, 0.052 is within 4 standard
    deviations (a correct GRU in the demo was flagged at the reference's 0.05 before)."""
    imdb = Threshold(0.63, 0.55, review_gap_test=0.05)
    sized = {"test": 0.748, "test_examples": 1000.0}
    assert memorisation(imdb, "accuracy", 0.80, sized, heldout_examples=2500) == []
    # The sizes unknown (a result stored before them): the rubric's bound alone.
    assert memorisation(imdb, "accuracy", 0.80, {"test": 0.748}, heldout_examples=None) != []
    # Large samples leave no such room: the same gap is flagged, against the reference.
    big = {"test": 0.748, "test_examples": 100_000.0}
    (reason,) = memorisation(imdb, "accuracy", 0.80, big, heldout_examples=100_000)
    assert reason.endswith("the reference's gap stays within 0.05")
    # A memoriser is still caught, and the reason names the bound that applied.
    (reason,) = memorisation(imdb, "accuracy", 0.99, sized, heldout_examples=2500)
    assert "0.242 better than on its own test split" in reason
    assert reason.endswith("the reference's gap stays within 0.05")  # the floor is 0.040
    small = {"test": 0.70, "test_examples": 200.0}  # a floor above the reference's bound
    (reason,) = memorisation(imdb, "accuracy", 0.85, small, heldout_examples=2000)
    pooled = (0.85 * 2000 + 0.70 * 200) / 2200
    assert reason.endswith(
        f"chance on samples of this size stays within {sampling_gap(pooled, 2000, 200):.3g}"
    )
    # The validation data's size, from the fit() record: the same floor.
    imdb = Threshold(0.63, 0.55, review_gap_validation=0.04)
    val = {"validation": 0.76}
    assert memorisation(imdb, "accuracy", 0.81, val, heldout_examples=2500) != []
    val["validation_examples"] = 800.0  # validation_split=0.2 of 4,000 reviews
    assert memorisation(imdb, "accuracy", 0.81, val, heldout_examples=2500) == []
    # An error metric has no binomial noise: its calibrated bound alone.
    mae = {"test": 4.5, "test_examples": 102.0}
    assert memorisation(MAE, "mae", 2.5, mae, heldout_examples=100) != []


def test_the_sampling_floor_is_the_difference_of_two_proportions():
    # 4 sd of p(1-p)(1/n + 1/m): 0.5 at 100 and 100 examples is 4 * 0.0707
    assert sampling_gap(0.5, 100, 100) == pytest.approx(4 * (0.25 * 0.02) ** 0.5)
    assert sampling_gap(1.0, 100, 100) == 0.0  # a perfect model on both: no noise
    assert sampling_gap(0.9, 1000, 1000) < sampling_gap(0.9, 100, 100)


def test_a_score_that_earns_no_points_is_never_flagged():
    # A constant prediction (a sigmoid output on house prices): its held-out error differs
    # from its test split's only by the two splits' prices, however far apart they are.
    assert memorisation(MAE, "mae", 20.4, {"test": 23.8, "validation": 22.7}) == []
    assert memorisation(ACCURACY, "accuracy", 0.45, {"test": 0.30}) == []
    # Just past zero it is: the bounds apply again.
    assert len(memorisation(MAE, "mae", 6.9, {"test": 9.0, "validation": 8.5})) == 2


def _call(epochs: int, steps: int, graded: bool = True) -> dict:
    return {"graded_model": graded, "epochs_run": epochs, "steps": steps, "callbacks": []}


def test_a_consistent_training_record_is_not_flagged():
    history = {"loss": [1.0] * 5}
    assert training_record("network", [_call(5, 24)], history, 120) == []
    # Several fits add up; a compile() in between restarts the count at the last one.
    assert training_record("network", [_call(3, 10), _call(5, 24)], history, 150) == []
    assert training_record("network", [_call(3, 10), _call(5, 24)], history, 120) == []
    # Other models' fits do not count; an unknown step count is not compared.
    assert training_record("network", [_call(9, 9, False), _call(5, 0)], history, 7) == []
    # Never trained, never recorded.
    assert training_record("network", [], {}, 0) == []
    assert training_record("network", None, {}, None) == []


def test_a_training_record_that_does_not_add_up_is_flagged():
    history = {"loss": [1.0] * 5}
    (steps,) = training_record("network", [_call(5, 24)], history, 500)
    assert steps == (
        "training record mismatch: the saved optimizer of `network` took 500 steps; the "
        "recorded fit() calls of this model ran 120"
    )
    assert "holds 5 epochs, but its last recorded fit() ran 2" in " ".join(
        training_record("network", [_call(2, 24)], history, 48)
    )
    assert len(training_record("network", [], history, 120)) == 2
    (missing,) = training_record("network", None, history, 120)
    assert missing.startswith("training record missing: the grader's record of fit() calls")


def test_suggested_bounds_lie_beyond_every_run():
    runs = [
        {"accuracy": 0.90, "test": 0.91},
        {"accuracy": 0.92, "test": 0.90},
        {"accuracy": 0.91, "test": 0.905},
    ]
    bounds = suggest_review(runs, "accuracy", higher_is_better=True)
    assert bounds["review_beyond"] > 0.92 and bounds["review_gap_test"] >= 0.02 + 0.02
    assert "review_gap_validation" not in bounds
    runs = [{"mae": 3.0, "validation": 2.5}, {"mae": 3.5, "validation": 4.5}]
    mae = suggest_review(runs, "mae", higher_is_better=False)
    assert mae["review_beyond"] < 3.0 and mae["review_gap_validation"] >= 0.5


@pytest.mark.parametrize(
    ("review", "message"),
    [
        ({"review_gap": 0.1}, "unknown key(s) review_gap"),
        ({"review_beyond": 0.8}, "'review_beyond' must lie beyond 'full'"),
        ({"review_gap_test": -0.1}, "'review_gap_test' must not be negative"),
        ({"review_gap_validation": "0.1"}, "'review_gap_validation' has the wrong type"),
    ],
)
def test_review_bounds_are_validated(review, message):
    data = tomllib.loads(LAB3.read_text())
    data["checks"][3]["thresholds"]["offline-sample"].update(review)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_rubric(data)


def test_no_reference_run_would_be_flagged():
    """The rubric's bounds let every calibration run through that recorded its witnesses."""
    checked = 0
    for lab, source, threshold, metric, run in calibration_runs():
        if "test" not in run:
            continue  # measured before the witnesses were recorded
        witnesses = {k: run[k] for k in ("test", "validation") if k in run}
        assert memorisation(threshold, metric, run[metric], witnesses) == [], (lab, source, run)
        checked += 1
    assert checked >= 12
