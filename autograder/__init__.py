"""Automated grading for the Day 2 deep-learning labs (Keras + nbgrader).

One folder per stage of the pipeline: ``data`` (offline data sets), ``sandbox`` (where and
as whom a student's kernel runs), ``grading`` (one notebook executed, captured, evaluated in
a clean process and scored against its ``rubric``), ``reports`` (feedback, gradebook,
exports), ``batch`` (a whole class), ``authoring`` (releases, examples, calibration, demo)
and ``hub`` (the course on JupyterHub); ``settings``, ``course`` and ``cli`` on top. The
README's "Map of the package" names every module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autograder.errors import AutograderError, ConfigError, DataError, GradingError
    from autograder.results import CheckResult, GradingResult
    from autograder.rubric import Rubric, lab_ids, load_rubric

__all__ = [
    "AutograderError",
    "CheckResult",
    "ConfigError",
    "DataError",
    "GradingError",
    "GradingResult",
    "Rubric",
    "__version__",
    "lab_ids",
    "load_rubric",
]

__version__ = "0.1.0"

# Imported on first use: a student's notebook imports ``autograder.datasets`` and
# ``autograder.checks`` only, and must not pay for the rubric's nbformat (a second of
# jsonschema's start-up) in every kernel.
_LAZY = {
    "AutograderError": "autograder.errors",
    "ConfigError": "autograder.errors",
    "DataError": "autograder.errors",
    "GradingError": "autograder.errors",
    "CheckResult": "autograder.results",
    "GradingResult": "autograder.results",
    "Rubric": "autograder.rubric",
    "lab_ids": "autograder.rubric",
    "load_rubric": "autograder.rubric",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autograder' has no attribute {name!r}")
