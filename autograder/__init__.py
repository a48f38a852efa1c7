"""Automated grading for the Day 2 deep-learning labs (Keras + nbgrader).

The pipeline, one module a step: ``datasets`` (offline-first data), ``rubric`` (each lab's
checks as data), ``capture`` and ``evaluate`` (model out of the student's kernel, graded in
a clean process), ``checks``, ``pipeline`` (nbgrader preprocessors), ``release``,
``course`` and ``gradebook``, and a thin ``cli``.
"""

from __future__ import annotations

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
