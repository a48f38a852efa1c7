"""nbgrader's autograde pipeline with the grader's steps added, and the steps after execution.

``autograde_preprocessors()`` is the ordered, declarative list handed to
``c.Autograde.autograde_preprocessors``. Our steps declare what they must run after and
before, and :func:`check_order` enforces it, so a reordering fails at configuration time.

The executing step, :class:`~autograder.grading.execute.GraderExecute`, is a module of its
own (the kernel, its sandbox and limits); here are the steps that use what it left:
:class:`GradeFromArtifacts` writes the evaluation's scores into the graded cells and the
result beside the notebook (:func:`read_result` reads it back), :class:`FlagForReview` sets
the gradebook's flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbformat import NotebookNode
from nbformat.v4 import new_output
from nbgrader import utils
from nbgrader.api import Assignment, GradeCell, Notebook, SourceCell, TaskCell
from nbgrader.preprocessors import (
    AssignLatePenalties,
    CheckCellMetadata,
    IgnorePattern,
    LimitOutput,
    NbGraderPreprocessor,
    OverwriteCells,
    SaveAutoGrades,
)
from traitlets import Integer

from autograder._runtime import check_nbgrader_schema_once
from autograder.errors import ConfigError
from autograder.fstree import remove_tree
from autograder.grading.evaluation_server import grade_in_subprocess
from autograder.grading.execute import GraderExecute
from autograder.grading.late import GrantExtension
from autograder.grading.rubric_record import RecordRubric
from autograder.grading.sanitize import NeutraliseStudentContent
from autograder.results import CheckResult, GradingResult
from autograder.settings import STATE_FILE

__all__ = [
    "GRADER_OUTPUTS",
    "RESULT_SUFFIX",
    "CheckCellMetadataOnce",
    "FlagForReview",
    "GradeFromArtifacts",
    "OverwriteCellsReadOnce",
    "autograde_preprocessors",
    "check_order",
    "read_result",
    "sanitize_preprocessors",
]

RESULT_SUFFIX = ".grading.json"
# What the grader writes beside an autograded notebook: never taken from a submission
# (nbgrader copies a submission's other files there), so nothing a student submits can
# stand where the grader writes.
GRADER_OUTPUTS = (f"*{RESULT_SUFFIX}", STATE_FILE)


def _outputs_for(result: CheckResult) -> list[NotebookNode]:
    lines = [f"[{result.status}] {result.title}: {result.score:g} / {result.points:g} points"]
    lines += [f"  - {m}" for m in result.messages]
    text = "\n".join(lines) + "\n"
    if result.score <= 0:
        # An error output is what nbgrader scores as zero and the formgrader shows in red.
        return [
            new_output(
                "error",
                ename="AutograderCheckFailed",
                evalue=result.messages[0] if result.messages else result.status,
                traceback=[text],
            )
        ]
    return [
        new_output("stream", name="stdout", text=text),
        new_output("execute_result", data={"text/plain": repr(result.score)}, execution_count=0),
    ]


class GradeFromArtifacts(NbGraderPreprocessor):
    """Score the captured model in a clean process and write the scores into the graded cells.

    Whatever the student's kernel printed in a graded cell is replaced, so forged outputs,
    a monkeypatched ``evaluate`` or a printed accuracy carry no weight.
    """

    runs_after: ClassVar[tuple[type, ...]] = (GraderExecute, LimitOutput)
    runs_before: ClassVar[tuple[type, ...]] = (SaveAutoGrades,)

    evaluation_timeout = Integer(600, help="Seconds allowed to the clean evaluation process").tag(
        config=True
    )

    def preprocess(self, nb: NotebookNode, resources: Any) -> tuple[NotebookNode, Any]:
        lab = resources["nbgrader"]["assignment"]
        state = resources.get("autograder", {})
        # A batch run evaluates in its workers and hands the result in; a serial run
        # evaluates here.
        result = state.get("result")
        if result is None:
            artifacts = state.get("artifacts")
            if artifacts is None:
                return nb, resources
            try:
                result = grade_in_subprocess(lab, Path(artifacts), timeout=self.evaluation_timeout)
            finally:
                remove_tree(artifacts)
        by_id = {c.id: c for c in result.checks}
        seen = set()
        for cell in nb.cells:
            if not utils.is_grade(cell) or cell.cell_type != "code" or utils.is_solution(cell):
                continue
            check = by_id.get(cell.metadata["nbgrader"]["grade_id"])
            if check is not None:
                cell.outputs = _outputs_for(check)
                seen.add(check.id)
        missing = sorted(set(by_id) - seen)
        if missing:
            self.log.warning("graded cells missing from the notebook: %s", ", ".join(missing))
        notebook = resources["nbgrader"]["notebook"]
        resources.setdefault("outputs", {})[notebook + RESULT_SUFFIX] = result.to_json().encode()
        resources["autograder"]["result"] = result
        self.log.info("%s: %s/%s points", notebook, result.score, result.max_score)
        return nb, resources


class FlagForReview(NbGraderPreprocessor):
    """Flag the notebook in nbgrader's gradebook when the grade needs a person's look
    (:mod:`autograder.grading.review`): the formgrader's own flag, so it shows where TAs look.

    Only ever sets the flag: one a TA set by hand is theirs to clear.
    """

    runs_after: ClassVar[tuple[type, ...]] = (GradeFromArtifacts, SaveAutoGrades)

    def preprocess(self, nb: NotebookNode, resources: Any) -> tuple[NotebookNode, Any]:
        result = resources.get("autograder", {}).get("result")
        if result is None or not result.review:
            return nb, resources
        from nbgrader.api import Gradebook

        info = resources["nbgrader"]
        with Gradebook(info["db_url"]) as gb:
            submitted = gb.find_submission_notebook(
                info["notebook"], info["assignment"], info["student"]
            )
            submitted.flagged = True
            gb.db.commit()
        self.log.warning("%s flagged for review: %s", info["notebook"], "; ".join(result.review))
        return nb, resources


class CheckCellMetadataOnce(CheckCellMetadata):
    """nbgrader's metadata check, with its schema checked once per process instead of once
    per cell (:func:`autograder._runtime.check_nbgrader_schema_once`)."""

    def preprocess(self, nb: NotebookNode, resources: Any) -> tuple[NotebookNode, Any]:
        check_nbgrader_schema_once()
        return super().preprocess(nb, resources)


class _NotebookCellsReadOnce:
    """A gradebook whose ``find_source_cell`` and ``find_graded_cell`` answer from the
    notebook's cells, read in one go on the first look-up (three queries); anything else,
    and a cell it does not hold (nbgrader's own error then), go to the gradebook."""

    def __init__(self, gradebook: Any, notebook: str, assignment: str) -> None:
        self._gradebook, self._of = gradebook, (notebook, assignment)
        self._source: dict[str, Any] = {}
        self._graded: dict[str, Any] = {}
        self._loaded = False

    def __enter__(self) -> Any:
        return self._gradebook.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._gradebook.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gradebook, name)

    def _read(self, notebook: str, assignment: str) -> bool:
        """Whether the look-up is for this notebook, its cells read on the first."""
        if (notebook, assignment) != self._of:
            return False
        if not self._loaded:
            self._loaded = True
            source, task, grade = (
                self._query(kind, notebook, assignment)
                for kind in (SourceCell, TaskCell, GradeCell)
            )
            self._source = {cell.name: cell for cell in source}
            # a grade cell before a task cell of the same name, as find_graded_cell does
            self._graded = {cell.name: cell for cell in [*task, *grade]}
        return True

    def _query(self, kind: type, notebook: str, assignment: str) -> list[Any]:
        # find_source_cell's and find_graded_cell's queries, for every cell of the notebook
        return list(
            self._gradebook.db.query(kind)
            .join(Notebook, Notebook.id == kind.notebook_id)  # type: ignore[attr-defined]
            .join(Assignment, Assignment.id == Notebook.assignment_id)
            .filter(Notebook.name == notebook, Assignment.name == assignment)
        )

    def find_source_cell(self, name: str, notebook: str, assignment: str) -> Any:
        found = self._source.get(name) if self._read(notebook, assignment) else None
        return found or self._gradebook.find_source_cell(name, notebook, assignment)

    def find_graded_cell(self, name: str, notebook: str, assignment: str) -> Any:
        found = self._graded.get(name) if self._read(notebook, assignment) else None
        return found or self._gradebook.find_graded_cell(name, notebook, assignment)


class OverwriteCellsReadOnce(OverwriteCells):
    """nbgrader's ``OverwriteCells``, reading the notebook's cells from the gradebook in
    three queries, not one or two per cell (some 20 a lab notebook, a third of sanitizing)."""

    @property
    def gradebook(self) -> Any:
        return self._cells_read_once

    @gradebook.setter
    def gradebook(self, gradebook: Any) -> None:  # set by nbgrader's preprocess
        self._cells_read_once = _NotebookCellsReadOnce(
            gradebook, self.notebook_id, self.assignment_id
        )


def check_order(pipeline: list[type]) -> None:
    """Raise :class:`ConfigError` when a step's declared order constraints are broken."""

    def where(wanted: type) -> int | None:
        # A subclass stands in for its base (the batch run's replaying Execute, say).
        return next((i for i, step in enumerate(pipeline) if issubclass(step, wanted)), None)

    for i, step in enumerate(pipeline):
        for other in getattr(step, "runs_after", ()):
            at = where(other)
            if at is None or at > i:
                raise ConfigError(f"{step.__name__} must run after {other.__name__}")
        for other in getattr(step, "runs_before", ()):
            at = where(other)
            if at is None or at < i:
                raise ConfigError(f"{step.__name__} must run before {other.__name__}")


def autograde_preprocessors() -> list[type]:
    pipeline: list[type] = [
        GraderExecute,
        IgnorePattern,
        ClearMetadataPreprocessor,
        LimitOutput,
        GradeFromArtifacts,
        SaveAutoGrades,
        FlagForReview,
        RecordRubric,
        GrantExtension,
        AssignLatePenalties,
        NeutraliseStudentContent,
        CheckCellMetadataOnce,
    ]
    check_order(pipeline)
    return pipeline


def sanitize_preprocessors() -> list[type]:
    """nbgrader's own sanitizing steps for ``c.Autograde.sanitize_preprocessors``, in its
    order, with the metadata check that checks its schema once and the cells' overwrite
    that reads them once."""
    from nbgrader.converters import Autograde

    default = Autograde.class_traits()["sanitize_preprocessors"].default()
    ours = {CheckCellMetadata: CheckCellMetadataOnce, OverwriteCells: OverwriteCellsReadOnce}
    return [ours.get(step, step) for step in default]


def read_result(autograded_notebook_dir: Path, notebook: str) -> GradingResult | None:
    path = autograded_notebook_dir / (notebook + RESULT_SUFFIX)
    return GradingResult.from_json(path.read_text()) if path.is_file() else None
