"""Boston housing regression: example submissions graded end to end."""

from __future__ import annotations

import pytest
from grading_helpers import messages, result_of, scores

LAB = "lab3_boston_regression"
pytestmark = pytest.mark.slow
FULL = {
    "check_normalisation": 2,
    "check_architecture": 2,
    "check_compile": 1,
    "check_callbacks": 1,
    "check_mae": 3,
    "check_comparison": 1,
}


@pytest.mark.parametrize(
    "student", ["correct", "variant-functional-adam", "variant-inline-callbacks"]
)
def test_correct_and_variant_get_full_marks(graded_boston, student):
    assert scores(graded_boston, LAB, student) == FULL
    result = result_of(graded_boston, LAB, student)
    assert result.metrics["mae"] <= 4.77
    assert result.data_source == "offline"


def test_variant_messages(graded_boston):
    msgs = messages(graded_boston, LAB, "variant-functional-adam", "check_callbacks")
    assert msgs == ("callbacks used in fit: EarlyStopping, ModelCheckpoint",)


def test_test_data_normalised_with_its_own_statistics(graded_boston):
    s = scores(graded_boston, LAB, "test-own-statistics")
    assert s["check_normalisation"] == 1  # the training half is right
    assert messages(graded_boston, LAB, "test-own-statistics", "check_normalisation") == (
        "`test_data` was normalised with its own mean and sd; use the training set's: "
        "`test_data = (test_data - mean) / std`, with `mean` and `std` computed on "
        "`train_data` (the test data must not influence preprocessing) (a conceptual error "
        "this lab teaches: 1 of 2 points)",
    )
    assert {k: v for k, v in s.items() if k not in ("check_normalisation", "check_mae")} == {
        k: v for k, v in FULL.items() if k not in ("check_normalisation", "check_mae")
    }


def test_sigmoid_output_unit(graded_boston):
    s = scores(graded_boston, LAB, "sigmoid-output")
    # the output for the task is the conceptual error (half), the missing linear unit a quarter
    assert s["check_architecture"] == 0.5
    assert s["check_mae"] == 0  # a sigmoid cannot reach prices of tens of thousands
    msgs = messages(graded_boston, LAB, "sigmoid-output", "check_architecture")
    assert (
        "the output layer should be Dense 1 linear; found Dense 1 sigmoid: end the network "
        "with `layers.Dense(1)` (no activation, so that it can predict any value) (a "
        "conceptual error this lab teaches: 1 of 2 points)" in msgs
    )
    assert result_of(graded_boston, LAB, "sigmoid-output").metrics["mae"] > 7


def test_callback_created_but_not_used(graded_boston):
    s = scores(graded_boston, LAB, "no-callback")
    assert s["check_callbacks"] == 0
    assert messages(graded_boston, LAB, "no-callback", "check_callbacks") == (
        "an EarlyStopping callback was created but never passed to fit(callbacks=...)",
    )


def test_callbacks_are_seen_however_they_are_passed_to_fit(graded_boston):
    """From the record of what each fit() call received: inline lists and variables alike."""
    for student in ("correct", "variant-inline-callbacks"):
        assert messages(graded_boston, LAB, student, "check_callbacks") == (
            "callbacks used in fit: EarlyStopping",
        )


def test_a_callback_attached_but_never_passed_to_fit_earns_nothing(graded_boston):
    """Forged evidence: set_model() makes a callback look used; fit() never received it."""
    s = scores(graded_boston, LAB, "callback-set-model")
    assert s["check_callbacks"] == 0
    assert messages(graded_boston, LAB, "callback-set-model", "check_callbacks") == (
        "an EarlyStopping callback was created but never passed to fit(callbacks=...)",
    )
    assert {k: v for k, v in s.items() if k not in ("check_callbacks", "check_mae")} == {
        k: v for k, v in FULL.items() if k not in ("check_callbacks", "check_mae")
    }


def test_a_history_no_fit_returned_earns_no_comparison_point(graded_boston):
    """Forged evidence: a History made by hand in place of the second run."""
    student = "forged-comparison-history"
    assert scores(graded_boston, LAB, student)["check_comparison"] == 0
    assert messages(graded_boston, LAB, student, "check_comparison") == (
        "`history_unscaled` was not returned by any fit() call of the notebook",
    )
    assert messages(graded_boston, LAB, "correct", "check_comparison")[0].startswith(
        "both runs made and compared"
    )


def test_honest_work_is_not_flagged_for_review(graded_boston):
    from autograder.authoring.examples import EXAMPLES

    for student in EXAMPLES[LAB]:
        assert result_of(graded_boston, LAB, student).review == (), student


def test_written_answer_waits_for_manual_grading(graded_boston):
    from autograder.reports.gradebook import check_table

    table = check_table(graded_boston.db_url, [LAB]).set_index("student")
    assert set(table["status"]) == {"needs manual grade"}
    assert table.loc["correct", "total"] == pytest.approx(10)
    assert table.loc["correct", "max"] == 12  # 10 autograded + 2 for the written answer


def test_normalising_inside_the_model_is_accepted(graded_boston):
    """Raw arrays, a Normalization layer adapted on the training data: the model is judged on
    raw held-out houses, as it was trained; the normalisation check keeps all but its share."""
    student = "variant-normalization-layer"
    s = scores(graded_boston, LAB, student)
    assert s == {**FULL, "check_normalisation": 1.5}
    assert messages(graded_boston, LAB, student, "check_normalisation") == (
        "the arrays stay raw and the model standardises them itself (a Normalization layer "
        "adapted on the training data), which works: accepted, less 0.5 points because the "
        "arrays are not prepared as the lab asks",
    )
    result = result_of(graded_boston, LAB, student)
    assert "learned from the inputs fit() received" in result.preparation
    assert result.check("check_architecture").messages[-1] == (
        "inputs prepared inside the model first (Normalization): accepted"
    )
