from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from grading_helpers import calibration_runs

from autograder.errors import ConfigError
from autograder.rubric import check_notebook_against_rubric, lab_ids, load_rubric, parse_rubric

LAB3 = Path(__file__).resolve().parents[1] / "autograder" / "labs" / "lab3_mnist_dense.toml"


def _lab3() -> dict:
    return tomllib.loads(LAB3.read_text())


def test_every_lab_rubric_loads():
    assert "lab3_mnist_dense" in lab_ids()
    for lab in lab_ids():
        rubric = load_rubric(lab)
        assert rubric.lab == lab
        assert rubric.total_points > 0


def test_lab3_rubric_values():
    rubric = load_rubric("lab3_mnist_dense")
    arch = rubric.check("check_architecture")
    assert [layer.describe() for layer in arch.layers] == ["Dense 512 relu", "Dense 10 softmax"]
    assert arch.params["params"] == 784 * 512 + 512 + 512 * 10 + 10
    assert rubric.total_points == 10
    assert rubric.preprocess.reshape == (-1, 784)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(extra=1), "unknown key(s) extra"),
        (lambda d: d["checks"][0].update(unit=512), "unknown key(s) unit"),
        (lambda d: d["checks"][0]["layers"][0].update(activaton="relu"), "activaton"),
        (lambda d: d["checks"][3]["thresholds"]["canonical"].update(ful=1), "ful"),
        (lambda d: d["checks"][1].update(kind="magic"), "unknown check kind 'magic'"),
        (lambda d: d["checks"][3].update(metric="f1"), "'metric' must be one of accuracy, mae"),
        (lambda d: d["preprocess"].update(normalize="test"), "'normalize' must be"),
        (lambda d: d["checks"][1].update(points=0), "'points' must be positive"),
        (lambda d: d["checks"][1].update(points="3"), "'points' has the wrong type"),
        (lambda d: d["checks"].append(dict(d["checks"][0])), "check ids must be unique"),
        (lambda d: d["preprocess"].update(labels="onehot"), "'labels' must be one of"),
        (lambda d: d["checks"][0].update(match="fuzzy"), "'match' must be one of"),
        (lambda d: d.pop("model"), "missing key 'model'"),
        # what findings cost: known aspects, conceptual errors at least half, variants at most
        (lambda d: d["checks"][2]["costs"].update(colour=0.5), "unknown key(s) colour"),
        (lambda d: d["checks"][2]["costs"].update(range=0.25), "'range' is a conceptual error"),
        (
            lambda d: d["checks"][2]["costs"].update(scaled_in_model=0.75),
            "'scaled_in_model' is an accepted variant: it may cost at most 0.5",
        ),
        (lambda d: d["checks"][2]["costs"].update(dtype=0), "'dtype' must be a share in (0, 1]"),
        (
            lambda d: d["checks"][2].update(conceptual=["reshaped_in_model"]),
            "'reshaped_in_model' is an accepted variant, not an error",
        ),
        (
            lambda d: d["checks"][1].update(conceptual=["optimizer", "loss"], costs={"loss": 0.5}),
            "conceptual error 'optimizer' needs its share in 'costs'",
        ),
        (lambda d: d["checks"][3].update(costs={}), "unknown key(s) costs"),
        (lambda d: d["preprocess"].update(learn_from={"val": "x"}), "unknown key(s) val"),
        (lambda d: d.update(manual={"essay": {"points": 2}}), "missing key 'title'"),
        # a variant's own threshold: calibrated on a named example, running the same way
        (
            lambda d: d["checks"][3]["thresholds"]["offline-sample"].update(
                variants={"LSTM": {"full": 0.8, "zero": 0.5}}
            ),
            "offline-sample.variants.LSTM: missing key 'example'",
        ),
        (
            lambda d: d["checks"][3]["thresholds"]["offline-sample"].update(
                variants={"LSTM": {"full": 0.4, "zero": 0.8, "example": "x"}}
            ),
            "a variant's threshold runs the other way",
        ),
        (
            lambda d: d.update(manual={"check_inputs": {"title": "t", "points": 1}}),
            "check ids must be unique",
        ),
    ],
)
def test_invalid_rubrics_are_rejected_with_the_key(mutate, message):
    data = _lab3()
    mutate(data)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_rubric(data)


def test_threshold_fraction_is_linear_and_clipped():
    th = load_rubric("lab3_mnist_dense").check("check_accuracy").threshold("offline-sample")
    assert th.fraction(th.full) == 1.0
    assert th.fraction(1.0) == 1.0
    assert th.fraction(th.zero) == 0.0
    assert th.fraction(0.0) == 0.0
    assert th.fraction((th.full + th.zero) / 2) == pytest.approx(0.5)


def test_unknown_data_source_threshold_is_an_error():
    check = load_rubric("lab3_mnist_dense").check("check_accuracy")
    with pytest.raises(ConfigError, match="no threshold for data source 'elsewhere'"):
        check.threshold("elsewhere")


def test_source_notebooks_agree_with_rubrics(repo):
    for lab in lab_ids():
        rubric = load_rubric(lab)
        check_notebook_against_rubric(repo / "source" / lab / f"{rubric.notebook}.ipynb", rubric)


@pytest.mark.parametrize(
    ("lab", "grade_id", "message"),
    [
        (
            "lab3_mnist_dense",
            "check_accuracy",
            "check_accuracy: the cell gives 7 points, the rubric 4",
        ),
        ("lab5_imdb_rnn", "rnn_answer", "cells graded by hand {'rnn_answer': 7.0}"),
    ],
)
def test_notebook_rubric_disagreement_is_reported(repo, tmp_path, lab, grade_id, message):
    """Autograded cells against the checks, cells graded by hand against ``manual``."""
    import nbformat

    nb = nbformat.read(repo / "source" / lab / f"{lab}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            cell.metadata["nbgrader"]["points"] = 7
    path = tmp_path / f"{lab}.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_notebook_against_rubric(path, load_rubric(lab))


def test_thresholds_are_met_by_every_calibration_run():
    """The reference solution must earn full marks in every measured run, per data source."""
    checked = 0
    for lab, source, threshold, metric, run in calibration_runs():
        assert threshold.fraction(run[metric]) == 1.0, (lab, source, run)
        checked += 1
    assert checked >= 15  # five runs per lab at least
