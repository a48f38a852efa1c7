"""Shared helpers for the end-to-end tests: grade a lab's example submissions once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autograder._runtime import environment
from autograder.course import Course, create_course
from autograder.demo import DEMO_ADVERSARIAL_LIMITS
from autograder.examples import EXAMPLES, example_path
from autograder.pipeline import read_result
from autograder.results import GradingResult
from autograder.rubric import load_rubric

# IMDB trains on 4,000 reviews in the test suite (thresholds of their own in the rubric).
QUICK = {"AUTOGRADER_TRAIN_LIMIT": "imdb=4000"}


# Adversarial examples hang or hoard memory on purpose: graded under tight limits, so that
# each costs seconds instead of the production limits' half hour. The per-cell timeout is
# above the notebook's, so that a hang ends the notebook (the case these examples test).
ADVERSARIAL_LIMITS = DEMO_ADVERSARIAL_LIMITS  # the demo grades them the same way


def limits_for(lab: str, name: str) -> dict[str, str]:
    return ADVERSARIAL_LIMITS if EXAMPLES[lab][name].adversarial else {}


def grade_examples(
    lab: str, root: Path, names: list[str] | None = None
) -> tuple[Course, dict[str, Any]]:
    with environment(QUICK):
        course = create_course(root, labs=[lab])
        outcomes = {}
        for name in names or EXAMPLES[lab]:
            course.submit(name, lab, example_path(lab, name))
            with environment(limits_for(lab, name)):
                outcomes[name] = course.autograde(lab, name)
    return course, outcomes


def result_of(course: Course, lab: str, student: str) -> GradingResult:
    result = read_result(course.root / "autograded" / student / lab, load_rubric(lab).notebook)
    assert result is not None, f"{student} was not graded"
    return result


def scores(course: Course, lab: str, student: str) -> dict[str, float]:
    return {c.id: c.score for c in result_of(course, lab, student).checks}


def messages(course: Course, lab: str, student: str, check: str) -> tuple[str, ...]:
    return result_of(course, lab, student).check(check).messages
