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

    def boom(self, nb, resources, limits, **_):
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


def test_the_metadata_check_keeps_nbgraders_verdicts_and_checks_its_schema_once():
    """Both sanitizing and autograding check each cell's nbgrader metadata against its
    schema; ours (compiled by fastjsonschema) must accept and refuse what nbgrader's does,
    with its message, change nothing it accepts (no schema defaults written in), and check
    the schema itself once per process, not once per cell."""
    import copy

    import jsonschema
    from nbformat.v4 import new_code_cell, new_notebook
    from nbgrader.nbgraderformat import MetadataValidator, ValidationError
    from nbgrader.preprocessors import CheckCellMetadata

    from autograder.grading.preprocessors import CheckCellMetadataOnce, sanitize_preprocessors

    c = Config()
    configure_grader(c)
    assert CheckCellMetadataOnce in c.Autograde.sanitize_preprocessors
    assert CheckCellMetadata not in sanitize_preprocessors()  # only our subclass of it
    assert CheckCellMetadataOnce in autograde_preprocessors()

    meta = {"grade": True, "solution": False, "locked": True, "points": 2}
    meta |= {"grade_id": "check", "schema_version": 3}
    good = new_notebook(cells=[new_code_cell("x = 1", metadata={"nbgrader": meta})] * 3)
    bad = copy.deepcopy(good)
    bad.cells[1].metadata.nbgrader["points"] = "two"  # the schema wants a number

    checks = []
    schema_class = jsonschema.validators.validator_for(MetadataValidator().schema)
    real_check = schema_class.check_schema

    def counting(schema, *args, **kwargs):
        checks.append(1)
        return real_check(schema, *args, **kwargs)

    for nb in (good, bad):  # nbgrader's own verdicts, for comparison
        try:
            CheckCellMetadata().preprocess(copy.deepcopy(nb), {})
            theirs = None
        except ValidationError as exc:
            theirs = str(exc)
        checked = copy.deepcopy(nb)
        try:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(schema_class, "check_schema", counting)
                CheckCellMetadataOnce().preprocess(checked, {})
                CheckCellMetadataOnce().preprocess(checked, {})
            ours = None
        except ValidationError as exc:
            ours = str(exc)
        assert ours == theirs, nb
        assert checked == nb  # "task" has a default in the schema: not written in
    assert theirs is not None and "may be corrupted" in theirs
    assert len(checks) <= 1  # nbgrader's own: once per cell and pass, six here
    from nbgrader.nbgraderformat import common

    compiled = [fast for _, fast in common.jsonschema._validators.values()]
    assert compiled and None not in compiled  # what passed, passed fastjsonschema's check


VALID_OUTPUTS = [
    {"output_type": "stream", "name": "stdout", "text": "Epoch 1/5\n"},
    {"output_type": "stream", "name": "stderr", "text": ["a", "b"]},
    {
        "output_type": "display_data",
        "data": {"text/plain": "x", "image/png": "iVBO"},
        "metadata": {},
    },
    {
        "output_type": "execute_result",
        "data": {"text/plain": "1"},
        "metadata": {},
        "execution_count": 3,
    },
    {"output_type": "error", "ename": "ValueError", "evalue": "v", "traceback": ["t"]},
]
REFUSED_OUTPUTS = [
    {"output_type": "stream", "name": "stdout", "text": 5},
    {"output_type": "display_data", "metadata": {}},
    {"output_type": "execute_result", "data": {}, "metadata": {}, "execution_count": "x"},
    {"output_type": "error", "ename": "E", "evalue": "v", "traceback": [1]},
    {"output_type": "stream", "name": "stdout", "text": "", "extra": 1},
]


def test_outputs_checked_compiled_get_nbformats_verdicts():
    """Each output nbclient makes is checked by a compiled check of its part of the schema
    (check_outputs_compiled): what nbformat's own check accepts passes, and what it refuses
    fails with nbformat's error."""
    from nbformat import ValidationError, from_dict
    from nbformat.v4 import nbbase

    from autograder._runtime import _CompiledNodeCheck

    GraderExecute()  # installs it
    check = nbbase.validate
    assert isinstance(check, _CompiledNodeCheck)
    for output in VALID_OUTPUTS:
        check(from_dict(output), output["output_type"])
        check.original(from_dict(output), output["output_type"])
    for output in REFUSED_OUTPUTS:
        errors = []
        for validate in (check, check.original):
            with pytest.raises(ValidationError) as caught:
                validate(from_dict(output), output["output_type"])
            errors.append(str(caught.value))
        assert errors[0] == errors[1]
    kinds = {o["output_type"] for o in VALID_OUTPUTS}
    assert all(check._checks[kind] is not None for kind in kinds)  # compiled, not nbformat's
    from autograder._runtime import _NODE_REFS, compile_output_checks

    compile_output_checks()  # a worker's warm-up: every part at once, none left for later
    assert nbbase.validate is check
    assert {"code_cell", *kinds} <= set(_NODE_REFS)
    assert all(check._checks.get(ref) is not None for ref in _NODE_REFS)
