"""Read grades back from nbgrader's gradebook: one snapshot, and pandas tables made from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "GradebookSnapshot",
    "GradedCell",
    "LabRecord",
    "StudentRecord",
    "SubmissionRecord",
    "SubmissionStatus",
    "check_table",
    "format_table",
    "read_gradebook",
    "warm_table",
]

SubmissionStatus = Literal["graded", "needs manual grade", "missing"]


@dataclass(frozen=True)
class StudentRecord:
    """A student as nbgrader knows them; names and email are often empty."""

    id: str
    first_name: str = ""
    last_name: str = ""
    email: str = ""
    lms_user_id: str = ""

    @property
    def name(self) -> str:
        """Last name, first name as LMS gradebooks list students; the id when there is none."""
        parts = [p for p in (self.last_name, self.first_name) if p]
        return ", ".join(parts) or self.id

    @property
    def contact(self) -> str:
        """The email, or the id when the id is itself an email (hub logins often are)."""
        return self.email or (self.id if "@" in self.id else "")


@dataclass(frozen=True)
class GradedCell:
    name: str
    max_score: float


@dataclass(frozen=True)
class LabRecord:
    name: str
    duedate: datetime | None  # naive UTC, as nbgrader stores it
    max_score: float
    cells: tuple[GradedCell, ...]  # rubric checks in rubric order, then written answers


@dataclass(frozen=True)
class SubmissionRecord:
    """One (student, lab): what ``nbgrader export`` and the formgrader see."""

    student: str
    lab: str
    status: SubmissionStatus
    scores: Mapping[str, float | None]  # per graded cell; None: waiting for its grader
    raw_score: float  # nbgrader's score: manual grades win over automatic ones
    max_score: float
    timestamp: datetime | None = None
    seconds_late: float = 0.0
    penalty: float = 0.0  # nbgrader's stored late penalty (AssignLatePenalties)
    flagged: bool = False  # nbgrader's flag: by the grader's review, or by a TA's hand
    review: tuple[str, ...] = ()  # the grader's reasons (autograder.grading.review), where known
    rubric: str = ""  # the rubric version that scored it (autograder.grading.rubric_record)

    @property
    def review_note(self) -> str:
        """What a TA reads about a flag: the grader's reasons, or that a person set it."""
        if self.review:
            return "; ".join(self.review)
        return "flagged in the formgrader" if self.flagged else ""

    @property
    def final_score(self) -> float:
        # nbgrader's own export: score minus penalty, never below zero.
        return max(0.0, self.raw_score - self.penalty)


@dataclass(frozen=True)
class GradebookSnapshot:
    students: tuple[StudentRecord, ...]  # nbgrader's order: last name, first name
    labs: tuple[LabRecord, ...]  # nbgrader's order: due date, name
    submissions: tuple[SubmissionRecord, ...]  # every (lab, student), missing ones included

    def of_lab(self, lab: str) -> tuple[SubmissionRecord, ...]:
        return tuple(s for s in self.submissions if s.lab == lab)

    def record(self, student: str, lab: str) -> SubmissionRecord:
        return self._by_key[student, lab]

    @cached_property
    def _by_key(self) -> dict[tuple[str, str], SubmissionRecord]:
        # A class of hundreds times four labs: a dict, not a scan per cell of the export.
        return {(s.student, s.lab): s for s in self.submissions}


def read_gradebook(
    db_url: str, labs: list[str] | None = None, *, course: Path | None = None
) -> GradebookSnapshot:
    """Everything the exports need, read once through nbgrader's own Gradebook API.

    Going through the API (not the SQL tables) means manual grades and extra credit from
    the formgrader count exactly as nbgrader counts them. With ``course`` (its folder), a
    flagged submission carries the grader's reasons, from the results beside its
    autograded notebook.
    """
    from nbgrader.api import Gradebook, MissingEntry

    from autograder.grading.rubric_record import read_rubric_versions

    versions = read_rubric_versions(db_url)
    with Gradebook(db_url) as gb:
        students = tuple(_student(s) for s in gb.students)
        lab_records: list[LabRecord] = []
        records: list[SubmissionRecord] = []
        for assignment in gb.assignments:
            if labs and assignment.name not in labs:
                continue
            lab = _lab(assignment)
            lab_records.append(lab)
            for student in students:
                try:
                    sub = gb.find_submission(assignment.name, student.id)
                except MissingEntry:
                    records.append(
                        SubmissionRecord(student.id, lab.name, "missing", {}, 0.0, lab.max_score)
                    )
                    continue
                record = replace(
                    _submission(sub, lab), rubric=versions.get((lab.name, student.id), "")
                )
                if course is not None and record.flagged:
                    record = replace(record, review=_review(course, sub))
                records.append(record)
    return GradebookSnapshot(students, tuple(lab_records), tuple(records))


def _review(course: Path, sub: Any) -> tuple[str, ...]:
    from autograder.grading.preprocessors import read_result

    reasons: list[str] = []
    for nb in sub.notebooks:
        folder = course / "autograded" / sub.student.id / sub.assignment.name
        try:
            result = read_result(folder, nb.name)
        except (OSError, ValueError, TypeError, KeyError):
            result = None  # an unreadable result: the flag still shows
        if result is not None:
            reasons += result.review
    return tuple(reasons)


def _student(s: Any) -> StudentRecord:
    return StudentRecord(
        s.id, s.first_name or "", s.last_name or "", s.email or "", s.lms_user_id or ""
    )


def _lab(assignment: Any) -> LabRecord:
    cells = [
        GradedCell(cell.name, float(cell.max_score))
        for nb in assignment.notebooks
        for cell in [*nb.grade_cells, *nb.task_cells]
        if cell.max_score
    ]
    cells.sort(key=lambda c: _order(assignment.name, c.name))
    return LabRecord(
        assignment.name, assignment.duedate, float(assignment.max_score or 0.0), tuple(cells)
    )


def _submission(sub: Any, lab: LabRecord) -> SubmissionRecord:
    scores: dict[str, float | None] = {}
    for nb in sub.notebooks:
        for grade in nb.grades:
            if grade.max_score:
                # An answer waiting for its grader has no score yet, not zero.
                pending = grade.auto_score is None and grade.manual_score is None
                scores[grade.name] = None if pending else float(grade.score)
    return SubmissionRecord(
        student=sub.student.id,
        lab=lab.name,
        status="needs manual grade" if sub.needs_manual_grade else "graded",
        scores={c.name: scores[c.name] for c in lab.cells if c.name in scores},
        raw_score=float(sub.score or 0.0),
        max_score=float(sub.max_score or 0.0),
        timestamp=sub.timestamp,
        seconds_late=float(sub.total_seconds_late),
        penalty=float(sub.late_submission_penalty or 0.0),
        flagged=any(nb.flagged for nb in sub.notebooks),
    )


def warm_table() -> None:
    """What the first :func:`check_table` of a process pays once: pandas' import (0.25 s)."""
    import pandas  # noqa: F401


def check_table(
    db_url: str,
    labs: list[str] | None = None,
    *,
    include_missing: bool = True,
    course: Path | None = None,
) -> pd.DataFrame:
    """One row per (student, lab): score per graded cell, total, max, status and review
    (why the submission is flagged, empty when it is not; the reasons need ``course``).

    With ``include_missing``, a student with no submission for a lab gets a row marked
    ``missing`` (what a TA wants to see); without it only submissions are listed.

    Read from nbgrader's own Gradebook API, so it shows exactly what ``nbgrader export``
    and the formgrader see (manual overrides included).
    """
    import pandas as pd

    rows = []
    by_lab: dict[str, list[str]] = {}  # graded cells of each lab with submissions
    for rec in read_gradebook(db_url, labs, course=course).submissions:
        if rec.status == "missing":
            if include_missing:
                rows.append(
                    {
                        "student": rec.student,
                        "lab": rec.lab,
                        "status": "missing",
                        "total": 0.0,
                        "max": rec.max_score,
                        "review": "",
                    }
                )
            continue
        row: dict[str, object] = {"student": rec.student, "lab": rec.lab, **rec.scores}
        by_lab.setdefault(rec.lab, list(rec.scores))
        row.update(
            total=rec.raw_score, max=rec.max_score, status=rec.status, review=rec.review_note
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    first = ["student", "lab"]
    last = ["total", "max", "status", "review"]
    middle = [c for c in frame.columns if c not in first + last]
    frame[middle] = frame[middle].astype("float64")  # pending answers as NaN, not None
    frame = frame[first + middle + last].sort_values(first, ignore_index=True)
    frame.attrs["cells_by_lab"] = by_lab
    return frame


def _order(lab: str, grade_id: str) -> tuple[int, str]:
    """Rubric checks in rubric order, then other graded cells (written answers) by name."""
    from autograder.rubric import lab_ids, load_rubric

    if lab in lab_ids():
        ids = [c.id for c in load_rubric(lab).checks]
        if grade_id in ids:
            return ids.index(grade_id), ""
    return 10_000, grade_id


def format_table(frame: pd.DataFrame) -> str:
    """Plain-text table for the terminal, one block per lab; flagged submissions marked in
    the status and their reasons listed under the block."""
    if frame.empty:
        return "(no submissions)"
    blocks = []
    for lab, part in frame.groupby("lab", sort=True):
        cells = frame.attrs.get("cells_by_lab", {}).get(lab)
        keep = ["student", *cells, "total", "max", "status"] if cells else list(part.columns)
        flagged = part[part["review"] != ""] if "review" in part.columns else part.iloc[:0]
        part = part[[c for c in keep if c in part.columns and c != "review"]].copy()
        if not flagged.empty:
            part.loc[flagged.index, "status"] = part.loc[flagged.index, "status"] + ", flagged"
        text = part.to_string(index=False, float_format="{:g}".format, na_rep="-")
        notes = [f"  review {r.student}: {r.review}" for r in flagged.itertuples()]
        blocks.append("\n".join([f"== {lab} ==", text, *notes]))
    return "\n\n".join(blocks)
