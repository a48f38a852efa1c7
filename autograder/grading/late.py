"""Late-submission penalties: the course's policy, applied by nbgrader during autograde.

The policy is data, ``late_policy.toml`` in the course directory (validated, unknown keys
rejected; no file means no penalty)::

    per_day = 10         # percent of the score taken for each started day late
    max_percent = 50     # never more than this
    grace_minutes = 15   # this late is on time; beyond it, days count from the due date

:class:`PolicyPenalty` is nbgrader's ``LateSubmissionPlugin`` hook
(``c.AssignLatePenalties.plugin_class``, wired in by :func:`autograder.course.apply_course_config`),
so nbgrader stores the penalty itself and ``nbgrader export``, the formgrader and
``autograder export`` all show the same figure. nbgrader computes it once, at autograde,
from the score at that time: :func:`refresh_late_penalties` re-applies the policy after
manual grading has changed the scores.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from nbgrader.plugins import LateSubmissionPlugin
from nbgrader.preprocessors import AssignLatePenalties, NbGraderPreprocessor

from autograder.errors import ConfigError

__all__ = [
    "EXTENSIONS_FILE",
    "POLICY_FILE",
    "GrantExtension",
    "LatePolicy",
    "PolicyPenalty",
    "load_late_policy",
    "read_extensions",
    "refresh_late_penalties",
]

POLICY_FILE = "late_policy.toml"
_DAY = 86_400.0


@dataclass(frozen=True)
class LatePolicy:
    """Percent of the score taken per started day late, capped; the defaults take nothing."""

    per_day: float = 0.0
    max_percent: float = 100.0
    grace_minutes: float = 0.0

    def __post_init__(self) -> None:
        if self.per_day < 0:
            raise ConfigError("late policy: 'per_day' must be >= 0")
        if not 0 <= self.max_percent <= 100:
            raise ConfigError("late policy: 'max_percent' must be between 0 and 100")
        if self.grace_minutes < 0:
            raise ConfigError("late policy: 'grace_minutes' must be >= 0")

    def days_late(self, seconds_late: float) -> int:
        """Started days late; zero within the grace period."""
        if seconds_late <= 0 or seconds_late <= self.grace_minutes * 60:
            return 0
        return math.ceil(seconds_late / _DAY)

    def percent(self, seconds_late: float) -> float:
        return min(self.per_day * self.days_late(seconds_late), self.max_percent)

    def penalty(self, score: float, seconds_late: float) -> float:
        """Points taken from ``score``: never negative, never more than the score."""
        # Rounded so that 10 % of 9 points reads 0.9 in every export, not 0.9000000000000001.
        return round(max(score, 0.0) * self.percent(seconds_late) / 100, 6)


def load_late_policy(course_root: str | Path) -> LatePolicy:
    """The course's ``late_policy.toml``, or no penalty when the course has none."""
    path = Path(course_root) / POLICY_FILE
    if not path.is_file():
        return LatePolicy()
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    known = [f.name for f in fields(LatePolicy)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})"
        )
    for key, value in data.items():
        # bool is an int to Python, but `per_day = true` is a typo, not a number.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: '{key}' must be a number, not {type(value).__name__}")
    try:
        return LatePolicy(**{k: float(v) for k, v in data.items()})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


class PolicyPenalty(LateSubmissionPlugin):
    """nbgrader's late-penalty hook, applying the course's ``late_policy.toml``.

    Read at each call, from the course root nbgrader is configured with, so that a policy
    edited between two grading runs takes effect without restarting anything.
    """

    def late_submission_penalty(
        self, student_id: str, score: float, total_seconds_late: float
    ) -> float | None:
        from nbgrader.coursedir import CourseDirectory

        root = CourseDirectory(parent=self).root
        policy = load_late_policy(root)
        penalty = policy.penalty(score, total_seconds_late)
        self.log.info(
            "late policy: %s is %.0f s late, %g%% of %g = %g",
            student_id,
            total_seconds_late,
            policy.percent(total_seconds_late),
            score,
            penalty,
        )
        return penalty or None  # None: nbgrader's "no penalty"


def refresh_late_penalties(db_url: str, policy: LatePolicy) -> int:
    """Re-apply ``policy`` to every stored submission, from its current score.

    What nbgrader's ``AssignLatePenalties`` would store if autograde ran again now, without
    running the notebooks: needed after a manual grade changed a late submission's score.
    Returns the number of notebooks whose stored penalty changed.
    """
    from nbgrader.api import Gradebook

    changed = 0
    with Gradebook(db_url) as gb:
        for assignment in gb.assignments:
            for sub in assignment.submissions:
                late = sub.total_seconds_late
                for nb in sub.notebooks:
                    new = _penalty_of(policy, nb, late)
                    if (nb.late_submission_penalty or None) != new:
                        nb.late_submission_penalty = new
                        changed += 1
        gb.db.commit()
    return changed


def _penalty_of(policy: LatePolicy, notebook: Any, seconds_late: float) -> float | None:
    if seconds_late <= 0:
        return None
    return policy.penalty(float(notebook.score or 0.0), seconds_late) or None


# --- extensions --------------------------------------------------------------------------------

EXTENSIONS_FILE = "extensions.json"  # written by `autograder extend`, never by hand


def read_extensions(course_root: str | Path) -> dict[str, dict[str, float]]:
    """Hours of extension per lab and student (``{lab: {student: hours}}``); none: empty."""
    path = Path(course_root) / EXTENSIONS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(per, dict)
        and all(isinstance(h, int | float) and not isinstance(h, bool) for h in per.values())
        for per in data.values()
    ):
        raise ConfigError(f"{path}: not {{lab: {{student: hours}}}}")
    return {str(lab): {str(s): float(h) for s, h in per.items()} for lab, per in data.items()}


class GrantExtension(NbGraderPreprocessor):
    """Put the student's extension for this lab on the submission, in nbgrader's own
    ``extension`` field, before the late penalty is computed from it: the submission's
    due date becomes the lab's plus the extension (``total_seconds_late`` counts from it),
    in the formgrader, ``nbgrader export`` and this grader's exports alike."""

    runs_after: ClassVar[tuple[type, ...]] = ()
    runs_before: ClassVar[tuple[type, ...]] = (AssignLatePenalties,)

    def preprocess(self, nb: Any, resources: Any) -> tuple[Any, Any]:
        from nbgrader.api import Gradebook
        from nbgrader.coursedir import CourseDirectory

        info = resources["nbgrader"]
        hours = read_extensions(CourseDirectory(parent=self).root)
        granted = hours.get(info["assignment"], {}).get(info["student"])
        with Gradebook(info["db_url"]) as gb:
            submission = gb.find_submission(info["assignment"], info["student"])
            extension = timedelta(hours=granted) if granted else None
            if submission.extension != extension:
                submission.extension = extension
                gb.db.commit()
        if granted:
            self.log.info("%s has an extension of %g h", info["student"], granted)
        return nb, resources
