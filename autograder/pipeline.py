"""nbgrader's autograde pipeline with the grader's two steps added.

``autograde_preprocessors()`` is the ordered, declarative list handed to
``c.Autograde.autograde_preprocessors``. Our steps declare what they must run after and
before, and :func:`check_order` enforces it, so a reordering fails at configuration time.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_output
from nbgrader import utils
from nbgrader.preprocessors import (
    AssignLatePenalties,
    CheckCellMetadata,
    Execute,
    IgnorePattern,
    LimitOutput,
    NbGraderPreprocessor,
    SaveAutoGrades,
)
from traitlets import Integer

from .capture import capture_source
from .errors import ConfigError
from .evaluate import grade_in_subprocess
from .results import CheckResult, GradingResult
from .rubric import lab_ids, load_rubric

__all__ = [
    "GradeFromArtifacts",
    "GraderExecute",
    "autograde_preprocessors",
    "check_order",
    "configure",
]

RESULT_SUFFIX = ".grading.json"


class GraderExecute(Execute):
    """nbgrader's Execute, then one grader-owned cell that saves the model and array summaries."""

    runs_after: ClassVar[tuple[type, ...]] = ()
    runs_before: ClassVar[tuple[type, ...]] = ()

    # nbgrader's 30 s default per cell is far too short for a training cell.
    timeout = Integer(900, allow_none=True).tag(config=True)

    def preprocess(self, nb: NotebookNode, resources: Any) -> tuple[NotebookNode, Any]:
        lab = resources["nbgrader"]["assignment"]
        if lab not in lab_ids():
            return super().preprocess(nb, resources)
        artifacts = Path(tempfile.mkdtemp(prefix=f"autograder-{lab}-"))
        resources.setdefault("autograder", {})["artifacts"] = str(artifacts)
        cell = new_code_cell(capture_source(load_rubric(lab), artifacts))
        nb.cells.append(cell)
        try:
            with utils.setenv(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES=""):
                nb, resources = super().preprocess(nb, resources)
        finally:
            # The grader's cell never reaches the autograded notebook or the feedback.
            if nb.cells and nb.cells[-1] is cell:
                nb.cells.pop()
            resources["autograder"]["capture_outputs"] = [
                o.get("text", o.get("evalue", "")) for o in cell.get("outputs", [])
            ]
        return nb, resources


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
                shutil.rmtree(artifacts, ignore_errors=True)
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
        AssignLatePenalties,
        CheckCellMetadata,
    ]
    check_order(pipeline)
    return pipeline


def configure(c: Any) -> None:
    """Apply the grader's settings to an nbgrader config object (``get_config()``)."""
    c.Autograde.autograde_preprocessors = autograde_preprocessors()
    c.GraderExecute.timeout = 900
    c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}


def read_result(autograded_notebook_dir: Path, notebook: str) -> GradingResult | None:
    path = autograded_notebook_dir / (notebook + RESULT_SUFFIX)
    return GradingResult.from_json(path.read_text()) if path.is_file() else None
