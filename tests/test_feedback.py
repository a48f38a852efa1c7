"""The grader's report in nbgrader's feedback: pictures, table, and what it must not reveal."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import grading_helpers as gh
import numpy as np
import pytest
from matplotlib import image as mpimg
from nbformat.v4 import new_code_cell, new_notebook
from nbgrader.preprocessors import GetGrades
from traitlets.config import Config

from autograder.course import configure_grader
from autograder.grading.metrics import confusion_matrix, metric_value
from autograder.grading.preprocessors import RESULT_SUFFIX
from autograder.reports.feedback import (
    ClearHiddenTestsFromGradedCells,
    GraderReport,
    confusion_matrix_png,
    feedback_preprocessors,
    predicted_vs_true_png,
    report_html,
    training_curves_png,
)
from autograder.results import CheckResult, GradingResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EMBEDDED_PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _read_png(data: bytes) -> np.ndarray:
    assert data.startswith(PNG_MAGIC)
    pixels = mpimg.imread(io.BytesIO(data), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    return pixels


def _embedded_pngs(page: str) -> list[np.ndarray]:
    return [_read_png(base64.b64decode(m)) for m in EMBEDDED_PNG.findall(page)]


# --- fast: pictures, numbers and HTML on made-up data -----------------------------------


def test_plots_on_made_up_data():
    rng = np.random.default_rng(0)
    history = {
        "loss": [1.0, 0.6, 0.4],
        "accuracy": [0.7, 0.85, 0.9],
        "val_loss": [0.9, 0.7, 0.75],
        "val_accuracy": [0.72, 0.8, 0.79],
        "learning_rate": [0.001] * 3,  # not a curve
    }
    curves = _read_png(training_curves_png(history) or b"")
    assert curves.shape[1] > curves.shape[0]  # two panels side by side
    assert training_curves_png({}) is None
    assert training_curves_png({"loss": []}) is None
    matrix = rng.integers(0, 50, size=(10, 10)).tolist()
    _read_png(confusion_matrix_png(matrix, [str(i) for i in range(10)], title="ten"))
    _read_png(confusion_matrix_png([[40, 10], [5, 45]], ["negative", "positive"], title="two"))
    true = rng.uniform(5, 50, 102)
    pairs = np.stack([true, true + rng.normal(0, 3, 102)], axis=1).tolist()
    _read_png(predicted_vs_true_png(pairs, title="your test split, not the held-out data"))


@pytest.mark.parametrize("kind", ["one_hot", "integer", "binary"])
def test_confusion_matrix_agrees_with_the_accuracy(kind):
    rng = np.random.default_rng(1)
    if kind == "binary":
        y = rng.integers(0, 2, 200)
        pred = rng.uniform(0, 1, (200, 1))
    else:
        y = rng.integers(0, 10, 200)
        pred = rng.dirichlet(np.ones(10), 200)
        if kind == "one_hot":
            y = np.eye(10)[y]
    counts = np.asarray(confusion_matrix(pred, y))
    assert counts.shape == ((2, 2) if kind == "binary" else (10, 10))
    assert counts.sum() == 200
    assert np.trace(counts) / counts.sum() == pytest.approx(metric_value("accuracy", pred, y))


def _result(**kw) -> GradingResult:
    checks = (
        CheckResult("check_inputs", "Input reshaping", "inputs", 2, 1.0, "partial", ("`x` <b>",)),
        CheckResult("check_accuracy", "Held-out accuracy", "metric", 4, 4.0, "pass", ("ok",)),
    )
    return GradingResult("lab3_mnist_dense", "offline-sample", checks, **kw)


def test_results_without_figures_still_load():
    result = _result(
        figures={"confusion_matrix": {"labels": ["0", "1"], "matrix": [[1, 0], [0, 1]]}}
    )
    assert GradingResult.from_json(result.to_json()) == result
    old = json.loads(result.to_json())
    del old["figures"]  # a result stored before the field existed
    assert GradingResult.from_json(json.dumps(old)).figures == {}


def test_report_escapes_messages_and_shows_gradebook_changes():
    page = report_html(_result(error="memory limit <exceeded>"), gradebook={"check_inputs": 2.0})
    assert "\n\n" not in page  # one HTML block for the markdown renderer
    assert "<code>x</code> &lt;b&gt;" in page and "<b>\n" not in page
    assert "memory limit &lt;exceeded&gt;" in page
    assert "adjusted by your instructor (autograder: 1)" in page
    assert "Autograded checks: <b>6 / 6</b>" in page
    assert not EMBEDDED_PNG.search(page)  # no history, no figures: no pictures


def test_feedback_pipeline_keeps_nbgrader_defaults():
    c = Config()
    configure_grader(c)
    steps = c.GenerateFeedback.preprocessors
    assert steps == feedback_preprocessors()
    names = [s.__name__ for s in steps]
    assert names == [
        "GetGrades",
        "ClearHiddenTestsFromGradedCells",
        "NeutraliseBeforeReport",
        "GraderReport",
        "CSSHTMLHeaderPreprocessor",
    ]
    assert steps.index(GetGrades) < steps.index(GraderReport)


def test_report_cell_goes_first_and_hidden_tests_go(tmp_path: Path):
    result = _result(history={"loss": [1.0, 0.5]})
    (tmp_path / f"nb{RESULT_SUFFIX}").write_text(result.to_json())
    graded = new_code_cell(
        "self_check()\n### BEGIN HIDDEN TESTS\nassert secret == 42\n### END HIDDEN TESTS",
        metadata={
            "nbgrader": {
                "grade": True,
                "solution": False,
                "grade_id": "check_inputs",
                "points": 2,
                "score": 1.5,
            }
        },
    )
    student = new_code_cell(
        "# my notes: ### BEGIN HIDDEN TESTS",
        metadata={"nbgrader": {"grade": False, "solution": True, "grade_id": "answer"}},
    )
    nb = new_notebook(cells=[student, graded])
    resources = {
        "nbgrader": {"notebook": "nb", "assignment": "lab3_mnist_dense"},
        "metadata": {"path": str(tmp_path)},
    }
    nb, resources = ClearHiddenTestsFromGradedCells().preprocess(nb, resources)
    nb, resources = GraderReport().preprocess(nb, resources)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].metadata["autograder"]["report"]
    assert "Grader's report" in nb.cells[0].source
    assert "1.5 / 2" in nb.cells[0].source  # the gradebook's score
    assert len(_embedded_pngs(nb.cells[0].source)) == 1  # the training curves
    assert "secret" not in nb.cells[2].source and "self_check()" in nb.cells[2].source
    assert nb.cells[1].source == "# my notes: ### BEGIN HIDDEN TESTS"  # the student's own
    assert "secret" not in nb.cells[0].source


# --- slow: feedback pages of graded submissions -----------------------------------------

LAB = "lab3_mnist_dense"
BOSTON = "lab3_boston_regression"


def _feedback(course, lab: str, student: str | None = None) -> None:
    outcome = course.api().generate_feedback(lab, student_id=student, force=True)
    assert outcome["success"], outcome.get("error") or outcome.get("log")


def _page(course, lab: str, student: str) -> str:
    path = course.root / "feedback" / student / lab / f"{lab}.html"
    assert path.is_file(), f"no feedback page for {student}"
    return path.read_text()


def _table_row(page: str, title: str) -> str:
    match = re.search(rf'<tr class="\w+"><td><a href="#\w+">{re.escape(title)}</a>.*?</tr>', page)
    assert match, f"no row for {title}"
    return match.group(0)


@pytest.mark.slow
def test_lab3_feedback_pages(graded_lab3):
    from autograder.data.loaders import load_heldout

    course = graded_lab3
    _feedback(course, LAB)
    # Every submission gets a page (the adversarial ones: tests/test_adversarial.py).
    for student in gh.ordinary_examples(LAB):
        page = _page(course, LAB, student)
        assert "Grader's report" in page
        assert "BEGIN HIDDEN TESTS" not in page and "Graded outside your kernel" not in page

    page = _page(course, LAB, "not-reshaped")
    assert page.index("Grader's report") < page.index('name="check_architecture"')  # on top
    result = gh.result_of(course, LAB, "not-reshaped")
    for check in result.checks:
        row = _table_row(page, check.title)
        assert f"{check.score:g} / {check.points:g}" in row
    row = _table_row(page, "Input reshaping and scaling")
    assert "<code>train_images = train_images.reshape((len(train_images), 28 * 28))</code>" in row
    row = _table_row(_page(course, LAB, "not-scaled"), "Input reshaping and scaling")
    assert "label-warning" in row  # partial credit
    assert "<code>train_images = train_images.astype(" in row and "/ 255</code>" in row

    page = _page(course, LAB, "correct")
    result = gh.result_of(course, LAB, "correct")
    assert "Autograded checks: <b>10 / 10</b>" in page
    assert len(_embedded_pngs(page)) == 2  # training curves, confusion matrix
    cm = result.figures["confusion_matrix"]
    counts = np.asarray(cm["matrix"])
    assert counts.shape == (10, 10) and cm["labels"] == [str(i) for i in range(10)]
    assert counts.sum() == len(load_heldout("mnist")[1])  # every held-out digit, counted once
    assert np.trace(counts) / counts.sum() == pytest.approx(result.metrics["accuracy"])
    assert "pairs" not in json.dumps(result.figures)  # nothing per example from held-out data

    untrained = gh.result_of(course, LAB, "untrained")
    assert untrained.history == {}
    assert len(_embedded_pngs(_page(course, LAB, "untrained"))) == 1  # no curves to draw


@pytest.mark.slow
def test_boston_feedback_shows_the_public_test_split(graded_boston):
    from autograder.data.loaders import load_boston_housing

    course = graded_boston
    _feedback(course, BOSTON, "test-own-statistics")
    page = _page(course, BOSTON, "test-own-statistics")
    result = gh.result_of(course, BOSTON, "test-own-statistics")
    assert len(_embedded_pngs(page)) == 2  # training curves, predicted vs. true
    assert "confusion_matrix" not in result.figures
    pairs = result.figures["predicted_vs_true"]["pairs"]
    _, (_, test_targets) = load_boston_housing()
    assert len(pairs) == len(test_targets)
    assert [t for t, _ in pairs] == pytest.approx(list(test_targets), abs=1e-4)
    assert "not the held-out data" in page
    row = _table_row(page, "Normalisation with training statistics")
    assert "computed on <code>train_data</code>" in row
    assert "adjusted by your instructor" not in page
