"""Lab 3's example submissions through nbgrader autograde with the grader's pipeline."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import grading_helpers as gh
import nbformat
import pytest

from autograder.reports.gradebook import check_table

LAB = "lab3_mnist_dense"
pytestmark = pytest.mark.slow


def result_of(course, student):
    return gh.result_of(course, LAB, student)


def scores(course, student):
    return gh.scores(course, LAB, student)


def test_correct_submission_gets_full_marks(graded_lab3):
    course = graded_lab3
    assert scores(course, "correct") == {
        "check_architecture": 3,
        "check_compile": 1,
        "check_inputs": 2,
        "check_accuracy": 4,
    }


def test_wrong_architecture(graded_lab3):
    course = graded_lab3
    s = scores(course, "wrong-architecture")
    assert s["check_architecture"] == 1.5  # the layers and the parameters: a quarter each
    msgs = result_of(course, "wrong-architecture").check("check_architecture").messages
    assert "layer 1: expected Dense 512 relu, found Dense with 64 units" in msgs
    assert s["check_compile"] == 1 and s["check_inputs"] == 2


def test_images_not_scaled(graded_lab3):
    course = graded_lab3
    result = result_of(course, "not-scaled")
    r = result.check("check_inputs")
    assert r.score == 0.5  # uint8 a quarter, unscaled pixels half: the conceptual error
    assert any(
        "divide the pixel values by 255" in m and "a conceptual error this lab teaches" in m
        for m in r.messages
    )
    # Judged on held-out images prepared as it was trained: raw pixels, as it learned them.
    assert "(n, 784) uint8, learned from the inputs fit() received" in result.preparation
    assert result.preparation in result.check("check_accuracy").messages


def test_images_not_reshaped(graded_lab3):
    course = graded_lab3
    s = scores(course, "not-reshaped")
    assert s["check_inputs"] == 0  # shape and dtype a quarter each, unscaled half
    assert s["check_accuracy"] == 0  # fit() failed, the model stayed untrained
    # The arrays' form does not fit the model: the lab's preparation is used, and said so.
    assert result_of(course, "not-reshaped").preparation.endswith(
        "the form of the notebook's arrays does not fit the model"
    )
    msgs = result_of(course, "not-reshaped").check("check_inputs").messages
    assert any("has shape (3000, 28, 28); expected (n, 784) (one row of" in m for m in msgs)


def test_untrained_and_badly_trained(graded_lab3):
    course = graded_lab3
    assert scores(course, "untrained")["check_accuracy"] == 0
    bad = result_of(course, "badly-trained")
    correct = result_of(course, "correct")
    assert bad.metrics["accuracy"] < correct.metrics["accuracy"]
    assert bad.check("check_accuracy").score < 4


def test_fake_accuracy_gets_no_accuracy_points(graded_lab3):
    course = graded_lab3
    result = result_of(course, "monkeypatched-evaluate")
    assert result.check("check_accuracy").score == 0
    assert result.metrics["accuracy"] < 0.5
    nb = nbformat.read(course.root / "autograded/monkeypatched-evaluate" / LAB / f"{LAB}.ipynb", 4)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "test_acc: 0.999" in printed  # the student's kernel was fooled; the grade was not
    graded = next(
        c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "check_accuracy"
    )
    assert graded.outputs[0]["output_type"] == "error"
    assert "held-out accuracy" in graded.outputs[0]["evalue"]


def test_gradebook_holds_the_grader_scores(graded_lab3):
    course = graded_lab3
    table = check_table(course.db_url, [LAB]).set_index("student")
    assert set(table.index) == set(gh.ordinary_examples(LAB))
    for student in gh.ordinary_examples(LAB):
        result = result_of(course, student)
        for check in result.checks:
            assert table.loc[student, check.id] == pytest.approx(check.score)
        assert table.loc[student, "total"] == pytest.approx(result.score)


def test_nbgrader_export_lists_every_student(graded_lab3):
    course = graded_lab3
    nbgrader = Path(sys.executable).parent / "nbgrader"
    subprocess.run([str(nbgrader), "export"], cwd=course.root, check=True, capture_output=True)
    with open(course.root / "grades.csv") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(gh.ordinary_examples(LAB))
    for student, row in rows.items():
        assert float(row["score"]) == pytest.approx(result_of(course, student).score)
        assert float(row["max_score"]) == 10


def test_result_json_is_saved_next_to_the_autograded_notebook(graded_lab3):
    course = graded_lab3
    path = course.root / "autograded/correct" / LAB / f"{LAB}.grading.json"
    data = json.loads(path.read_text())
    assert data["lab"] == LAB and data["data_source"] == "offline-sample"
    assert len(data["history"]["loss"]) == 5  # five epochs, captured for feedback


# --- accepted variants and conceptual errors (issue: fair grades) ---------------------------

VARIANTS = {
    # preparation inside the model: full marks but the input check's stated share
    "variant-flatten-in-model": (
        "check_inputs",
        "the model reshapes it itself (Flatten first), which works: accepted, less 0.5 points",
        "(n, 28, 28) float32, values / 255, learned from the inputs fit() received",
    ),
    "variant-rescaling-in-model": (
        "check_inputs",
        "the model scales them itself (Rescaling first), which works: accepted, less 0.5",
        "(n, 784) float32, learned from the inputs fit() received",
    ),
    # integer labels and the sparse loss: the loss matches; one-hot was asked
    "variant-sparse-labels": (
        "check_inputs",
        "`train_labels` has shape (3000,); expected (n, 10) (one-hot encode them",
        "(n, 784) float32, values / 255",
    ),
}


@pytest.mark.parametrize("student", sorted(VARIANTS))
def test_accepted_variants_keep_full_marks_but_the_inputs_share(graded_lab3, student):
    check, message, form = VARIANTS[student]
    result = result_of(graded_lab3, student)
    assert scores(graded_lab3, student) == {
        "check_architecture": 3,
        "check_compile": 1,
        "check_inputs": 1.5,
        "check_accuracy": 4,
    }
    assert any(message in m for m in result.check(check).messages)
    assert form in result.preparation
    assert result.preparation.startswith("held-out inputs prepared as the model was trained")


def test_a_loss_for_another_output_costs_half_the_compile_check(graded_lab3):
    result = result_of(graded_lab3, "binary-crossentropy")
    assert scores(graded_lab3, "binary-crossentropy")["check_compile"] == 0.5
    (message,) = result.check("check_compile").messages
    assert "found binary_crossentropy" in message
    assert "it does not match the network's output and the labels" in message
    assert "(a conceptual error this lab teaches: 0.5 of 1 point)" in message
