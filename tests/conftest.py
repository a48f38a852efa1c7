from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def staged_data() -> None:
    """The suite grades against the staged offline data (``make test`` stages it first)."""
    from autograder.datasets import data_source

    for name in ("mnist", "boston_housing", "imdb"):
        data_source(name)  # raises DatasetMissing naming `autograder stage-data`


@pytest.fixture(scope="session")
def graded_lab3(tmp_path_factory: pytest.TempPathFactory, staged_data: None):
    """Every lab 3 example submission, graded once through nbgrader with our pipeline."""
    from autograder.course import create_course
    from autograder.examples import EXAMPLES, example_path

    lab = "lab3_mnist_dense"
    course = create_course(tmp_path_factory.mktemp("lab3") / "course", labs=[lab])
    outcomes = {}
    for name in EXAMPLES[lab]:
        course.submit(name, lab, example_path(lab, name))
        outcomes[name] = course.autograde(lab, name)
    return course, outcomes
