"""Feedback students can act on: a "Grader's report" at the top of nbgrader's feedback.

:class:`GraderReport` runs in nbgrader's ``generate_feedback`` (see
:func:`feedback_preprocessors`). It reads the result the grader stored beside the autograded
notebook (``<notebook>.grading.json``) and puts one cell first: a table of the checks
(score, status, what to change) and pictures drawn from numbers the grader computed in its
clean evaluation process. Nothing from the held-out data reaches the page but aggregates:
the student's own training curves, confusion counts over the held-out examples, and, for a
regression, predictions on the student's own (public) test split.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from nbformat import NotebookNode
from nbformat.v4 import new_markdown_cell
from nbgrader import utils
from nbgrader.preprocessors import ClearHiddenTests, GetGrades, NbGraderPreprocessor

from autograder.grading.preprocessors import check_order, read_result
from autograder.grading.sanitize import NeutraliseStudentContent
from autograder.results import CheckResult, GradingResult
from autograder.rubric import lab_ids, load_rubric

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ClearHiddenTestsFromGradedCells",
    "GraderReport",
    "confusion_matrix_png",
    "feedback_preprocessors",
    "predicted_vs_true_png",
    "report_html",
    "training_curves_png",
]

_log = logging.getLogger(__name__)
_DPI = 100
# Keys of a Keras history that are not a loss or a metric.
_NOT_CURVES = frozenset({"lr", "learning_rate"})
# What one example of a data set is, for captions.
_EXAMPLE_NOUN = {"mnist": "digits", "imdb": "reviews", "boston_housing": "houses"}
_STATUS = {
    "pass": ("passed", "success"),
    "partial": ("partial credit", "warning"),
    "fail": ("no credit", "danger"),
    "error": ("not graded", "danger"),
}


# --- pictures ---------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    # A Figure with an Agg canvas of its own: pyplot's global state is never touched, so
    # this is safe in a long-lived formgrader and in threads. Imported here because the
    # course config imports this module for every nbgrader command.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def training_curves_png(history: Mapping[str, Sequence[float]]) -> bytes | None:
    """Loss and metrics per epoch (validation alongside), one panel each; ``None`` if empty."""
    series = {
        k: [float(v) for v in values]
        for k, values in history.items()
        if k not in _NOT_CURVES and len(values) > 0
    }
    bases: list[str] = []
    for key in series:
        base = key.removeprefix("val_")
        if base not in bases and base not in _NOT_CURVES:
            bases.append(base)
    bases.sort(key=lambda b: b != "loss")  # loss first, metrics in the order fit() gave
    bases = bases[:3]
    if not bases:
        return None
    fig = _figure(4.0 * len(bases), 3.0)
    axes = fig.subplots(1, len(bases), squeeze=False)[0]
    for ax, base in zip(axes, bases, strict=True):
        for key, label in ((base, "training"), (f"val_{base}", "validation")):
            values = series.get(key)
            if values:
                epochs = range(1, len(values) + 1)
                ax.plot(epochs, values, marker="o" if len(values) <= 30 else None, label=label)
        ax.set_title(base)
        drawn = [v for k in (base, f"val_{base}") for v in series.get(k, []) if np.isfinite(v)]
        if drawn and min(drawn) > 0 and max(drawn) > 30 * min(drawn):
            ax.set_yscale("log")  # a first epoch far above the rest would flatten the curve
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def confusion_matrix_png(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], *, title: str
) -> bytes:
    """Counts of true class (rows) against predicted class (columns), each cell labelled."""
    counts = np.asarray(matrix, dtype=np.int64)
    n = counts.shape[0]
    side = max(3.2, 1.4 + 0.45 * n)
    fig = _figure(side + 0.4, side + 0.4)
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues")
    dark = counts.max() / 2 if counts.size and counts.max() > 0 else 1
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                fontsize=8 if n > 5 else 11,
                color="white" if counts[i, j] > dark else "black",
            )
    ax.set_xticks(range(n), [str(label) for label in labels])
    ax.set_yticks(range(n), [str(label) for label in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(textwrap.fill(title, 48), fontsize=9)
    return _png(fig)


def predicted_vs_true_png(pairs: Sequence[Sequence[float]], *, title: str) -> bytes:
    """Each example as (true, predicted), with the diagonal of perfect predictions and the MAE."""
    values = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    true, pred = values[:, 0], values[:, 1]
    fig = _figure(4.6, 4.4)
    ax = fig.add_subplot()
    ax.scatter(true, pred, s=14, alpha=0.7, label="one example")
    if len(values):
        lo, hi = float(values.min()), float(values.max())
        ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", label="perfect prediction")
        mae = float(np.abs(pred - true).mean())
        ax.text(0.98, 0.02, f"MAE {mae:.2f}", transform=ax.transAxes, ha="right", va="bottom")
    ax.set_xlabel("true value")
    ax.set_ylabel("predicted value")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(textwrap.fill(title, 52), fontsize=9)
    return _png(fig)


# --- the report -------------------------------------------------------------------------


def _text(message: str) -> str:
    """A message as HTML: escaped, with its `code` spans set as code."""
    escaped = html.escape(message).replace("\n", "<br>")
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<img alt="{html.escape(alt)}" style="max-width:100%" src="data:image/png;base64,{data}">'
    )


def _row(check: CheckResult, gradebook_score: float | None) -> str:
    score = check.score if gradebook_score is None else gradebook_score
    adjusted = gradebook_score is not None and abs(gradebook_score - check.score) > 1e-6
    status = check.status
    if adjusted:
        status = "pass" if score >= check.points else "fail" if score <= 0 else "partial"
    label, css = _STATUS[status]
    shown = f"{score:g} / {check.points:g}"
    if adjusted:
        shown += f"<br><small>adjusted by your instructor (autograder: {check.score:g})</small>"
    items = "".join(f"<li>{_text(m)}</li>" for m in check.messages)
    return (
        f'<tr class="{css}"><td><a href="#{html.escape(check.id)}">{html.escape(check.title)}'
        f'</a></td><td class="center">{shown}</td>'
        f'<td><span class="label label-{css}">{label}</span></td>'
        f'<td><ul style="margin:0;padding-left:1.2em">{items}</ul></td></tr>'
    )


def _context(lab: str) -> tuple[str, str]:
    """What one example of the lab is called, and the name of the student's test inputs."""
    try:
        rubric = load_rubric(lab)
    except Exception:  # an unknown lab still gets a report, with plainer captions
        return "examples", "your test data"
    preview = next((c.params.get("preview") for c in rubric.checks if c.kind == "metric"), None)
    test_x = f"`{preview[0]}`" if preview else "your test data"
    return _EXAMPLE_NOUN.get(rubric.dataset, "examples"), test_x


def _figures_html(result: GradingResult) -> list[str]:
    noun, test_x = _context(result.lab)
    parts: list[str] = []
    curves = training_curves_png(result.history)
    if curves is not None:
        parts += [
            "<h4>Your training run</h4>",
            _img(curves, "loss and metrics per epoch"),
            "<p>Loss and metrics per epoch as <code>fit()</code> recorded them in your notebook "
            "(validation curves where you trained with validation data). A validation curve "
            "that rises while the training curve falls means overfitting: train for fewer "
            "epochs or stop early.</p>",
        ]
    cm = result.figures.get("confusion_matrix")
    if cm:
        total = int(np.asarray(cm["matrix"]).sum())
        title = f"Held-out {noun}: true (rows) vs. predicted (columns), counts of {total:,}"
        parts += [
            "<h4>Confusion matrix on the held-out data</h4>",
            _img(confusion_matrix_png(cm["matrix"], cm["labels"], title=title), title),
            f"<p>How many held-out {noun} of each true class your model put in each class; "
            "the diagonal holds the right answers. Counts only: no held-out example is "
            "shown. A bright cell off the diagonal names a confusion to look into.</p>",
        ]
    pvt = result.figures.get("predicted_vs_true")
    if pvt:
        title = (
            f"Predicted vs. true on your own test split ({test_x.strip('`')}), "
            "not the held-out data"
        )
        parts += [
            "<h4>Predicted vs. true on your test split</h4>",
            _img(predicted_vs_true_png(pvt["pairs"], title=title), title),
            f"<p>Each point is one example of your own test split ({_text(test_x)}, prepared "
            "as the grader prepares the held-out data), never a held-out one: the held-out "
            "targets stay hidden. Points on the dashed line are perfect predictions.</p>",
        ]
    return parts


def report_html(result: GradingResult, *, gradebook: Mapping[str, float] | None = None) -> str:
    """The report as one HTML block (no blank lines, so markdown keeps it whole).

    ``gradebook`` maps grade ids to the scores in nbgrader's gradebook, which win over the
    autograder's where an instructor changed them.
    """
    gradebook = gradebook or {}
    rows = [_row(c, gradebook.get(c.id)) for c in result.checks]
    score = round(sum(gradebook.get(c.id, c.score) for c in result.checks), 2)
    try:
        figures = _figures_html(result)
    except Exception:  # a picture that cannot be drawn must not cost the student the table
        _log.warning("%s: the report's pictures could not be drawn", result.lab, exc_info=True)
        figures = []
    lines = [
        # tex2jax_ignore: MathJax must not read a `$` in a message as mathematics.
        '<div class="autograder-report tex2jax_ignore">',
        "<h2>Grader's report</h2>",
        f"<p>Autograded checks: <b>{score:g} / {result.max_score:g}</b> points. Where a check "
        "lost points, its message says what to change. Written answers, if any, are graded "
        "by your instructor. Your model was graded outside your notebook, on held-out data it "
        "never saw; nothing of that data is shown here but totals and counts.</p>",
    ]
    if result.error:
        lines.append(f'<div class="alert alert-danger">{_text(result.error)}</div>')
    lines += [
        '<table class="table table-bordered table-condensed autograder-checks">',
        '<thead><tr><th>Check</th><th class="center">Score</th><th>Status</th>'
        "<th>What the grader found</th></tr></thead>",
        "<tbody>",
        *rows,
        "</tbody></table>",
        *figures,
        "</div>",
    ]
    return "\n".join(line for line in lines if line.strip())


# --- nbgrader preprocessors -------------------------------------------------------------


class ClearHiddenTestsFromGradedCells(ClearHiddenTests):
    """Hidden tests cut from the feedback's graded cells, where nbgrader 0.9 leaves them.

    nbgrader restores the instructor's graded cells, hidden tests included, before grading,
    and its feedback shows them (jupyter/nbgrader#917). Only graded cells are cleared: a
    student's own cell that quotes the delimiters is neither cut nor able to stop feedback.
    """

    def preprocess_cell(
        self, cell: NotebookNode, resources: Any, cell_index: int
    ) -> tuple[NotebookNode, Any]:
        if utils.is_grade(cell) and not utils.is_solution(cell):
            self._remove_hidden_test_region(cell)
        return cell, resources


class GraderReport(NbGraderPreprocessor):
    """Insert the grader's report as the first cell of the feedback notebook."""

    # After GetGrades: the report shows the gradebook's scores, manual changes included.
    runs_after: ClassVar[tuple[type, ...]] = (GetGrades,)
    runs_before: ClassVar[tuple[type, ...]] = ()

    def preprocess(self, nb: NotebookNode, resources: Any) -> tuple[NotebookNode, Any]:
        notebook = resources["nbgrader"]["notebook"]
        folder = resources.get("metadata", {}).get("path")
        result = read_result(Path(folder), notebook) if folder else None
        if result is None:
            if resources["nbgrader"]["assignment"] in lab_ids():
                self.log.warning("%s: no grading result beside it, so no grader's report", notebook)
            return nb, resources
        gradebook = {
            cell.metadata.nbgrader["grade_id"]: float(cell.metadata.nbgrader["score"])
            for cell in nb.cells
            if utils.is_grade(cell) and cell.metadata.nbgrader.get("score") is not None
        }
        cell = new_markdown_cell(
            report_html(result, gradebook=gradebook), metadata={"autograder": {"report": True}}
        )
        nb.cells.insert(0, cell)
        return nb, resources


class NeutraliseBeforeReport(NeutraliseStudentContent):
    """Students' content made inert again in feedback (autograded notebooks from before
    it was done at autograde), before the grader's own report goes in."""

    runs_after: ClassVar[tuple[type, ...]] = ()
    runs_before: ClassVar[tuple[type, ...]] = (GraderReport,)


def feedback_preprocessors() -> list[type]:
    """nbgrader's feedback preprocessors with ours after GetGrades (for the gradebook scores)."""
    from nbgrader.converters import GenerateFeedback

    defaults: list[type] = list(GenerateFeedback.class_traits()["preprocessors"].default())
    at = defaults.index(GetGrades) + 1 if GetGrades in defaults else 0
    ours = [ClearHiddenTestsFromGradedCells, NeutraliseBeforeReport, GraderReport]
    pipeline = [*defaults[:at], *ours, *defaults[at:]]
    check_order(pipeline)
    return pipeline
