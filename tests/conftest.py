from __future__ import annotations

import os
from pathlib import Path

import pytest

from autograder.settings import QUIET_TENSORFLOW

# TensorFlow in the test process (the evaluator's checks run here too) as the grader has it.
for _key, _value in QUIET_TENSORFLOW.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def staged_data() -> None:
    """The suite grades against the staged offline data (``make test`` stages it first)."""
    from autograder.data.loaders import data_source

    for name in ("mnist", "boston_housing", "imdb"):
        data_source(name)  # raises DatasetMissing naming `autograder stage-data`


def _graded(lab: str, factory: pytest.TempPathFactory):
    from grading_helpers import grade_examples

    course, outcomes = grade_examples(lab, factory.mktemp(lab) / "course")
    failed = {k: o.get("error") for k, o in outcomes.items() if not o["success"]}
    assert not failed, failed
    return course


@pytest.fixture(scope="session")
def graded_lab3(tmp_path_factory: pytest.TempPathFactory, staged_data: None):
    """Every lab 3 example submission, graded once through nbgrader with our pipeline."""
    return _graded("lab3_mnist_dense", tmp_path_factory)


@pytest.fixture(scope="session")
def graded_boston(tmp_path_factory: pytest.TempPathFactory, staged_data: None):
    return _graded("lab3_boston_regression", tmp_path_factory)


@pytest.fixture(scope="session")
def graded_cnn(tmp_path_factory: pytest.TempPathFactory, staged_data: None):
    return _graded("lab4_mnist_cnn", tmp_path_factory)


@pytest.fixture(scope="session")
def graded_rnn(tmp_path_factory: pytest.TempPathFactory, staged_data: None):
    return _graded("lab5_imdb_rnn", tmp_path_factory)
