"""A course's calendar: when each lab opens and is due, its LMS ids, and extensions.

``COURSE_DIR/schedule.toml`` is the instructor's, one table per lab, unknown keys refused::

    [lab3_mnist_dense]
    opens = 2026-12-01T09:00:00+01:00   # with an offset: a date without one is refused
    due = 2026-12-08T23:59:00+01:00
    canvas_id = 1234                     # the Canvas assignment the export's column fills
    grade_on_submit = false              # exams: no grade until staff grade (default: true)

The hub releases a lab when its ``opens`` time comes (a lab without one at the hub's start).

``autograder schedule COURSE_DIR`` puts the due dates into nbgrader's gradebook (its own
``duedate``: the formgrader, collect and the late penalty read it there).
``autograder extend COURSE_DIR STUDENT LAB --hours N`` grants an extension, kept in
``extensions.json`` beside it and put on the submission, in nbgrader's own ``extension``
field, when it is autograded (:class:`autograder.grading.late.GrantExtension`).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from autograder._runtime import ensure_tool_path
from autograder.errors import ConfigError
from autograder.fstree import write_fresh
from autograder.grading.late import EXTENSIONS_FILE, read_extensions
from autograder.roster import check_student_id
from autograder.rubric import lab_ids

__all__ = [
    "SCHEDULE_FILE",
    "LabDates",
    "apply_due_dates",
    "canvas_ids",
    "grant_extension",
    "is_open",
    "load_schedule",
]

SCHEDULE_FILE: Final = "schedule.toml"
_KEYS: Final = frozenset({"opens", "due", "canvas_id", "grade_on_submit"})
_CANVAS_ID: Final = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True)
class LabDates:
    lab: str
    opens: datetime | None = None  # aware
    due: datetime | None = None  # aware
    canvas_id: str = ""
    grade_on_submit: bool = True

    @property
    def due_utc(self) -> datetime | None:
        """The due date as nbgrader stores it: naive UTC."""
        return None if self.due is None else self.due.astimezone(UTC).replace(tzinfo=None)


def _when(where: str, value: Any) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ConfigError(
            f"{where} must be a date and time with its offset (2026-12-08T23:59:00+01:00), "
            f"not {value!r}"
        )
    return value


def load_schedule(course_root: Path) -> dict[str, LabDates]:
    """The course's ``schedule.toml``, checked; no file: no dates."""
    path = course_root / SCHEDULE_FILE
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    known = set(lab_ids())
    schedule = {}
    for lab, table in data.items():
        if lab not in known:
            raise ConfigError(f"{path.name}: no lab {lab!r} (known: {', '.join(sorted(known))})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path.name}: [{lab}] must be a table")
        unknown = set(table) - _KEYS
        if unknown:
            raise ConfigError(f"{path.name}: [{lab}] unknown key {', '.join(sorted(unknown))}")
        opens = _when(f"[{lab}] opens", table["opens"]) if "opens" in table else None
        due = _when(f"[{lab}] due", table["due"]) if "due" in table else None
        if opens is not None and due is not None and due <= opens:
            raise ConfigError(f"{path.name}: [{lab}] is due before it opens")
        canvas_id = str(table.get("canvas_id", ""))
        if canvas_id and not _CANVAS_ID.fullmatch(canvas_id):
            raise ConfigError(f"{path.name}: [{lab}] canvas_id must be a number")
        on_submit = table.get("grade_on_submit", True)
        if not isinstance(on_submit, bool):
            raise ConfigError(f"{path.name}: [{lab}] grade_on_submit must be true or false")
        schedule[lab] = LabDates(lab, opens, due, canvas_id, on_submit)
    return schedule


def is_open(schedule: dict[str, LabDates], lab: str, now: datetime | None = None) -> bool:
    """Whether students may fetch ``lab``: it has no ``opens`` time, or that time has come."""
    dates = schedule.get(lab)
    opens = dates.opens if dates is not None else None
    return opens is None or opens <= (now or datetime.now(UTC))


def canvas_ids(course_root: Path) -> dict[str, str]:
    """Lab -> Canvas assignment id, for the labs that have one."""
    return {lab: d.canvas_id for lab, d in load_schedule(course_root).items() if d.canvas_id}


def apply_due_dates(course_root: Path, db_url: str) -> dict[str, datetime | None]:
    """Each scheduled lab's due date into nbgrader's gradebook (naive UTC); what was set."""
    from nbgrader.api import Gradebook

    schedule = load_schedule(course_root)
    ensure_tool_path()
    with Gradebook(db_url) as gb:
        for lab, dates in schedule.items():
            gb.update_or_create_assignment(lab, duedate=dates.due_utc)
    return {lab: d.due_utc for lab, d in schedule.items()}


def grant_extension(course_root: Path, student: str, lab: str, hours: float) -> None:
    """Give ``student`` ``hours`` more for ``lab`` (0 takes the extension back)."""
    check_student_id(student)
    if lab not in lab_ids():
        raise ConfigError(f"no lab {lab!r}")
    if not (0 <= hours <= 24 * 365):
        raise ConfigError(f"an extension is 0 to {24 * 365} hours, not {hours:g}")
    extensions = read_extensions(course_root)
    per_lab = extensions.setdefault(lab, {})
    if hours:
        per_lab[student] = hours
    else:
        per_lab.pop(student, None)
    text = json.dumps({k: v for k, v in extensions.items() if v}, indent=1, sort_keys=True)
    staged = course_root / f".{EXTENSIONS_FILE}.new"
    write_fresh(staged, text)
    staged.chmod(0o644)  # read by whichever account autogrades (the formgrader's)
    staged.replace(course_root / EXTENSIONS_FILE)  # whole or not at all
