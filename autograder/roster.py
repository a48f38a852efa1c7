"""The class list: students with their names, e-mail and LMS id, read from the files
instructors already have and kept in nbgrader's gradebook, where the exports read them.

Three kinds of file are read, told apart by their header row:

- nbgrader's own (``nbgrader db student import``): ``id, first_name, last_name, email,
  lms_user_id``;
- a Canvas gradebook export: ``Student`` ("Last, First"), ``ID`` (Canvas' user id, the LMS
  id), ``SIS Login ID`` (the login, used as the student's id);
- a Moodle export: ``First name``, ``Last name``, ``Username`` (the id), ``Email address``,
  ``ID number`` (the LMS id, when the export has it).

A student's id is their account name on the hub and on the machine, so it must be one:
lowercase letters, digits, ``_`` and ``-``, starting with a letter, at most 32 characters.
A bad file is refused whole, naming the line and the reason; nothing is half imported.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from autograder._runtime import ensure_tool_path
from autograder.errors import ConfigError

__all__ = [
    "Person",
    "RosterChange",
    "apply_roster",
    "check_student_id",
    "drop_student",
    "read_roster",
    "student_ids",
]

_ID: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_EMAIL: Final = re.compile(r"[^@\s]+@[^@\s]+")
_MAX_ROWS: Final = 10_000


@dataclass(frozen=True)
class Person:
    """One student, as nbgrader's gradebook stores them."""

    id: str
    first_name: str = ""
    last_name: str = ""
    email: str = ""
    lms_user_id: str = ""

    def fields(self) -> dict[str, str | None]:
        """The gradebook's columns besides the id; empty ones as None (nbgrader's NULL)."""
        return {k: (v or None) for k, v in asdict(self).items() if k != "id"}


@dataclass(frozen=True)
class RosterChange:
    added: tuple[str, ...]
    updated: tuple[str, ...]
    unchanged: tuple[str, ...]

    def format(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged"
            + (f": added {', '.join(self.added)}" if self.added else "")
        )


def _cell(row: dict[str, str | None], key: str) -> str:
    return (row.get(key) or "").strip()


def _from_nbgrader(row: dict[str, str | None]) -> Person:
    return Person(
        _cell(row, "id"),
        _cell(row, "first_name"),
        _cell(row, "last_name"),
        _cell(row, "email"),
        _cell(row, "lms_user_id"),
    )


def _from_canvas(row: dict[str, str | None]) -> Person | None:
    name = _cell(row, "Student")
    if name == "Points Possible" or not name:
        return None  # Canvas' second row: the points of each column
    if name == "Student, Test" and not _cell(row, "SIS Login ID"):
        return None  # the account Canvas' "Student View" adds to every gradebook
    last, _, first = name.partition(",")
    return Person(
        _cell(row, "SIS Login ID").lower(),
        first.strip(),
        last.strip(),
        "",
        _cell(row, "ID"),
    )


def _from_moodle(row: dict[str, str | None]) -> Person:
    return Person(
        _cell(row, "Username").lower(),
        _cell(row, "First name"),
        _cell(row, "Last name"),
        _cell(row, "Email address"),
        _cell(row, "ID number"),
    )


def read_roster(path: Path) -> list[Person]:
    """Every student in the file, checked: ids valid and unique, e-mails well formed."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # Excel writes a byte-order mark
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the roster {path}: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = {h.strip() for h in reader.fieldnames or []}
    reader.fieldnames = [h.strip() for h in reader.fieldnames or []]
    parse: Callable[[dict[str, str | None]], Person | None]
    if "id" in header:
        parse = _from_nbgrader
    elif {"Student", "ID", "SIS Login ID"} <= header:
        parse = _from_canvas
    elif {"First name", "Last name", "Username"} <= header:
        parse = _from_moodle
    else:
        raise ConfigError(
            f"{path.name}: not a roster this grader reads (a header with `id` as nbgrader's, "
            "`Student, ID, SIS Login ID` as a Canvas export, or `First name, Last name, "
            f"Username` as a Moodle one); found: {', '.join(sorted(header)) or 'nothing'}"
        )
    people: list[Person] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        if line > _MAX_ROWS:
            raise ConfigError(f"{path.name}: more than {_MAX_ROWS} rows")
        person = parse(row)
        if person is None:
            continue
        problem = _problem(person)
        if problem:
            raise ConfigError(f"{path.name} line {line}: {problem}")
        if person.id in seen:
            raise ConfigError(
                f"{path.name} line {line}: {person.id} is already on line {seen[person.id]}"
            )
        seen[person.id] = line
        people.append(person)
    if not people:
        raise ConfigError(f"{path.name}: no students")
    return people


def check_student_id(student: str) -> None:
    """Raise :class:`ConfigError` unless ``student`` can be a student's account name."""
    problem = _problem(Person(student))
    if problem:
        raise ConfigError(f"student {problem}")


def _problem(person: Person) -> str | None:
    if not _ID.fullmatch(person.id):
        return (
            f"{person.id!r} cannot be an account name (lowercase letters, digits, _ and -, "
            "starting with a letter, at most 32 characters)"
        )
    if person.email and not _EMAIL.fullmatch(person.email):
        return f"{person.email!r} is not an e-mail address"
    return None


def apply_roster(db_url: str, people: Iterable[Person]) -> RosterChange:
    """Add or update each student in the gradebook; students not listed are left as they
    are (``drop_student`` removes one)."""
    from nbgrader.api import Gradebook, MissingEntry

    people = list(people)
    for person in people:  # all checked before anything is written
        problem = _problem(person)
        if problem:
            raise ConfigError(f"student {person.id!r}: {problem}")
    added: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    ensure_tool_path()  # nbgrader runs alembic on a new gradebook
    with Gradebook(db_url) as gb:
        for person in people:
            try:
                current = gb.find_student(person.id)
            except MissingEntry:
                added.append(person.id)
            else:
                stored = {k: getattr(current, k) for k in person.fields()}
                (unchanged if stored == person.fields() else updated).append(person.id)
            gb.update_or_create_student(person.id, **person.fields())
    return RosterChange(tuple(added), tuple(updated), tuple(unchanged))


def drop_student(db_url: str, student: str) -> None:
    """Remove a student who has submitted nothing. One with submissions stays, with their
    grades: nbgrader would delete those with the student, and grades are never lost."""
    from nbgrader.api import Gradebook, MissingEntry

    ensure_tool_path()
    with Gradebook(db_url) as gb:
        try:
            record = gb.find_student(student)
        except MissingEntry:
            raise ConfigError(f"no student {student!r} in the gradebook") from None
        if record.submissions:
            labs = ", ".join(sorted(s.assignment.name for s in record.submissions))
            raise ConfigError(
                f"{student} has submissions ({labs}); their grades stay in the gradebook"
            )
        gb.remove_student(student)


def student_ids(db_url: str) -> frozenset[str]:
    """Every student in the gradebook."""
    from nbgrader.api import Gradebook

    ensure_tool_path()
    with Gradebook(db_url) as gb:
        return frozenset(student.id for student in gb.students)
