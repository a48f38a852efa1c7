from __future__ import annotations

import pytest
from nbgrader.preprocessors import LimitOutput, SaveAutoGrades
from traitlets.config import Config

from autograder.course import configure_grader
from autograder.errors import ConfigError
from autograder.grading.execute import (
    GradeFromArtifacts,
    GraderExecute,
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
