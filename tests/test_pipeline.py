from __future__ import annotations

import pytest
from nbgrader.preprocessors import LimitOutput, SaveAutoGrades
from traitlets.config import Config

from autograder.course import configure_grader
from autograder.errors import ConfigError
from autograder.grading.execute import GraderExecute
from autograder.grading.preprocessors import (
    GradeFromArtifacts,
    autograde_preprocessors,
    check_order,
)


def test_default_pipeline_order_is_valid():
    pipeline = autograde_preprocessors()
    assert pipeline.index(GraderExecute) < pipeline.index(GradeFromArtifacts)
    assert pipeline.index(GradeFromArtifacts) < pipeline.index(SaveAutoGrades)


def test_grading_after_saving_is_refused():
    pipeline = autograde_preprocessors()
    pipeline.remove(GradeFromArtifacts)
    pipeline.append(GradeFromArtifacts)
    # Refused by whichever constraint is checked first (it must also precede FlagForReview).
    with pytest.raises(ConfigError, match=r"GradeFromArtifacts must run|after GradeFromArtifacts"):
        check_order(pipeline)


def test_grading_without_execution_is_refused():
    pipeline = [LimitOutput, GradeFromArtifacts, SaveAutoGrades]
    with pytest.raises(ConfigError, match="must run after GraderExecute"):
        check_order(pipeline)


def test_configure_sets_pipeline_and_timeout():
    c = Config()
    configure_grader(c)
    assert c.Autograde.autograde_preprocessors[0] is GraderExecute
    assert c.GraderExecute.timeout >= 600


def test_an_execution_the_grader_aborts_leaves_no_capture_folder(monkeypatch):
    """An error of the grader's own (not a limit, not the student's) propagates, and the
    capture folder made for the notebook goes with it: a long-running grading service or
    batch worker must not collect them."""
    import os

    import nbformat

    from autograder.sandbox.files import grader_work_dir

    def boom(self, nb, resources, limits, grants=None):
        raise RuntimeError("the grader's own error")

    monkeypatch.setattr(GraderExecute, "_execute", boom)
    pattern = f"autograder-{os.getpid()}-lab3_mnist_dense-*"
    before = set(_glob(grader_work_dir(), pattern))
    resources = {"nbgrader": {"assignment": "lab3_mnist_dense", "notebook": "x", "student": ""}}
    execute = GraderExecute(restore_missing_cells=False)
    with pytest.raises(RuntimeError, match="own error"):
        execute.preprocess(nbformat.v4.new_notebook(), resources)
    assert set(_glob(grader_work_dir(), pattern)) == before
    assert "artifacts" not in resources["autograder"]


def _glob(folder, pattern):
    from pathlib import Path

    return [str(p) for p in Path(folder).glob(pattern)]
