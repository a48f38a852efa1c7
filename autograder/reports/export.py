"""Gradebook exports for TAs and LMSs: CSV, Excel, Canvas and Moodle imports, statistics, plot.

Everything comes from one :func:`autograder.reports.gradebook.read_gradebook` snapshot, read
through nbgrader's Gradebook API: manual grades from the formgrader and nbgrader's stored
late penalties (:mod:`autograder.grading.late`) are what ``nbgrader export`` shows too.

Each format is one entry of :data:`FORMATS`: a file name and a small writer.

- ``grades.csv`` / ``grades.xlsx``: one row per student; per lab every graded cell, the raw
  total, how late (hours), the penalty, the final score, the status, why it is flagged
  for review (empty when it is not) and the rubric version that scored it; overall totals.
  The workbook adds the per-lab summary and the points possible.
- ``canvas.csv``: Canvas' gradebook import layout (what Canvas' own gradebook export
  writes): ``Student, ID, SIS User ID, SIS Login ID, Section``, one column per assignment
  (``name (canvas id)`` when the id is known, else the name: Canvas matches the title or
  creates the assignment), and a ``Points Possible`` row first.
- ``moodle.csv``: Moodle's "Import from CSV": identifier columns (``Username``, ``Email
  address``; the teacher picks one under "Map from") and one column per grade item.

In the two LMS files a missing submission is 0 (as in ``nbgrader export``), and a
submission still waiting for a manual grade is left empty, which both LMSs read as "no
grade": a partial total is never pushed to students. They carry no review column: an
LMS would take it for a grade item, and what flags a submission is for staff only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from autograder.errors import ConfigError
from autograder.grading.late import (
    POLICY_FILE,
    LatePolicy,
    load_late_policy,
    refresh_late_penalties,
)
from autograder.reports.gradebook import (
    GradebookSnapshot,
    StudentRecord,
    SubmissionRecord,
    read_gradebook,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CANVAS_ID_COLUMNS",
    "FORMATS",
    "MOODLE_ID_COLUMNS",
    "ExportContext",
    "ExportFormat",
    "ExportResult",
    "canvas_frame",
    "export_gradebook",
    "grades_frame",
    "moodle_frame",
    "plot_distribution",
    "points_frame",
    "stale_penalties",
    "summary_frame",
]

CANVAS_ID_COLUMNS = ("Student", "ID", "SIS User ID", "SIS Login ID", "Section")
# Canvas' own export writes the row label indented; its importer matches the words.
CANVAS_POINTS_ROW = "    Points Possible"
MOODLE_ID_COLUMNS = ("First name", "Last name", "Username", "Email address")
SUMMARY_FILE = "summary.csv"
PLOT_FILE = "distribution.png"
_DIGITS = 4  # sums of float points (0.1 + 0.2) print as 0.3, not 0.30000000000000004


def _sorted_students(snap: GradebookSnapshot) -> list[StudentRecord]:
    # As displayed ("Last, First", or the id), like an LMS gradebook.
    return sorted(snap.students, key=lambda s: (s.name.lower(), s.id))


def _submitted(rec: SubmissionRecord) -> bool:
    return rec.status != "missing"


def _lms_score(rec: SubmissionRecord) -> float | None:
    """What an LMS gets: final points, 0 if missing, nothing while a manual grade is due."""
    if rec.status == "needs manual grade":
        return None
    return round(rec.final_score, _DIGITS)


def grades_frame(snap: GradebookSnapshot) -> pd.DataFrame:
    """One row per student, one column per lab and graded cell, and the totals."""
    import pandas as pd

    rows = []
    max_total = sum(lab.max_score for lab in snap.labs)
    for student in _sorted_students(snap):
        row: dict[str, object] = {
            "student": student.id,
            "first_name": student.first_name,
            "last_name": student.last_name,
            "email": student.contact,
        }
        total = 0.0
        for lab in snap.labs:
            rec = snap.record(student.id, lab.name)
            done = _submitted(rec)
            for cell in lab.cells:
                row[f"{lab.name}/{cell.name}"] = rec.scores.get(cell.name)
            row[f"{lab.name}/raw total"] = round(rec.raw_score, _DIGITS) if done else None
            row[f"{lab.name}/late by (h)"] = round(rec.seconds_late / 3600, 2) if done else None
            row[f"{lab.name}/penalty"] = round(rec.penalty, _DIGITS) if done else None
            row[f"{lab.name}/final"] = round(rec.final_score, _DIGITS)
            row[f"{lab.name}/status"] = rec.status
            row[f"{lab.name}/review"] = rec.review_note or None
            row[f"{lab.name}/rubric"] = rec.rubric or None
            total += rec.final_score
        row["total"] = round(total, _DIGITS)
        row["max"] = max_total
        row["percent"] = round(100 * total / max_total, 2) if max_total else None
        rows.append(row)
    return pd.DataFrame(rows)


def points_frame(snap: GradebookSnapshot) -> pd.DataFrame:
    """Points possible of each score column of :func:`grades_frame`."""
    import pandas as pd

    rows: list[dict[str, object]] = []
    for lab in snap.labs:
        rows += [{"column": f"{lab.name}/{c.name}", "points": c.max_score} for c in lab.cells]
        rows.append({"column": f"{lab.name}/final", "points": lab.max_score})
    rows.append({"column": "total", "points": sum(lab.max_score for lab in snap.labs)})
    return pd.DataFrame(rows, columns=["column", "points"])


def canvas_frame(
    snap: GradebookSnapshot, assignment_ids: Mapping[str, str | int] | None = None
) -> pd.DataFrame:
    """Canvas' gradebook import: identity columns, one column per lab, Points Possible first.

    ``ID`` is nbgrader's ``lms_user_id`` (Canvas' user id) when known; ``SIS Login ID`` the
    nbgrader student id, which is the login on a hub behind the LMS' single sign-on.
    """
    import pandas as pd

    ids = assignment_ids or {}
    title = {
        lab.name: f"{lab.name} ({ids[lab.name]})" if lab.name in ids else lab.name
        for lab in snap.labs
    }
    blank = dict.fromkeys(CANVAS_ID_COLUMNS[1:], "")
    rows: list[dict[str, object]] = [
        {
            "Student": CANVAS_POINTS_ROW,
            **blank,
            **{title[lab.name]: lab.max_score for lab in snap.labs},
        }
    ]
    for s in _sorted_students(snap):
        rows.append(
            {
                "Student": s.name,
                "ID": s.lms_user_id,
                "SIS User ID": "",
                "SIS Login ID": s.id,
                "Section": "",
                **{title[lab.name]: _lms_score(snap.record(s.id, lab.name)) for lab in snap.labs},
            }
        )
    columns = [*CANVAS_ID_COLUMNS, *title.values()]
    frame = pd.DataFrame(rows, columns=columns)
    frame[list(title.values())] = frame[list(title.values())].astype("float64")
    return frame


def moodle_frame(snap: GradebookSnapshot) -> pd.DataFrame:
    """Moodle's grade import from CSV: identifier columns, then one column per grade item."""
    import pandas as pd

    rows = []
    for s in _sorted_students(snap):
        rows.append(
            {
                "First name": s.first_name,
                # Moodle shows these in the preview only; the id stands in for no name at all.
                "Last name": s.last_name or ("" if s.first_name else s.id),
                "Username": s.id,
                "Email address": s.contact,
                **{lab.name: _lms_score(snap.record(s.id, lab.name)) for lab in snap.labs},
            }
        )
    labs = [lab.name for lab in snap.labs]
    frame = pd.DataFrame(rows, columns=[*MOODLE_ID_COLUMNS, *labs])
    frame[labs] = frame[labs].astype("float64")
    return frame


def summary_frame(snap: GradebookSnapshot) -> pd.DataFrame:
    """Per lab, over submitted final scores: count, mean, median, sd, min, max, full marks.

    ``sd`` is the sample standard deviation (n - 1); ``full_marks`` the share of
    submissions at the lab's maximum after any late penalty; ``flagged`` those marked for
    review (:mod:`autograder.grading.review`, or by a TA); ``late`` those in after the
    due date (grace included); ``missing`` the students without a submission (not in the
    statistics).
    """
    import pandas as pd

    rows = []
    for lab in snap.labs:
        recs = snap.of_lab(lab.name)
        done = [r for r in recs if _submitted(r)]
        finals = pd.Series([r.final_score for r in done], dtype="float64")
        full = sum(r.final_score >= lab.max_score - 1e-9 for r in done)
        rows.append(
            {
                "lab": lab.name,
                "points": lab.max_score,
                "count": len(done),
                "missing": len(recs) - len(done),
                "needs_manual_grade": sum(r.status == "needs manual grade" for r in done),
                "flagged": sum(r.flagged for r in done),
                "late": sum(r.seconds_late > 0 for r in done),
                "mean": finals.mean(),
                "median": finals.median(),
                "sd": finals.std(ddof=1),
                "min": finals.min(),
                "max": finals.max(),
                "full_marks": full / len(done) if done else math.nan,
            }
        )
    columns = ["lab", "points", "count", "missing", "needs_manual_grade", "flagged", "late"]
    columns += ["mean", "median", "sd", "min", "max", "full_marks"]
    return pd.DataFrame(rows, columns=columns).round(_DIGITS)


def plot_distribution(snap: GradebookSnapshot, path: Path) -> None:
    """One histogram of final scores per lab, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    # A Figure on the Agg canvas, not pyplot: no global backend switch, no GUI, no leaks.
    n = max(len(snap.labs), 1)
    fig = Figure(figsize=(7, 2.6 * n), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    if not snap.labs:
        axes[0].text(0.5, 0.5, "no labs in the gradebook", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, lab in zip(axes, snap.labs, strict=False):
        recs = snap.of_lab(lab.name)
        finals = [r.final_score for r in recs if _submitted(r)]
        top = lab.max_score or 1.0
        ax.hist(finals, bins=max(1, math.ceil(top)), range=(0, top), edgecolor="white")
        ax.set_title(f"{lab.name}: {len(finals)} submitted, {len(recs) - len(finals)} missing")
        ax.set_xlabel(f"final score (of {lab.max_score:g} points)")
        ax.set_ylabel("students")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if not finals:
            ax.text(0.5, 0.5, "no submissions", transform=ax.transAxes, ha="center")
    fig.savefig(path, format="png", dpi=100)


@dataclass(frozen=True)
class ExportContext:
    """What a writer may need beyond the gradebook: the course's LMS ids."""

    canvas_ids: Mapping[str, str] = field(default_factory=dict)  # lab -> Canvas assignment


def _write_csv(snap: GradebookSnapshot, path: Path, ctx: ExportContext) -> None:
    grades_frame(snap).to_csv(path, index=False)


def _write_xlsx(snap: GradebookSnapshot, path: Path, ctx: ExportContext) -> None:
    import pandas as pd

    with pd.ExcelWriter(path, engine="openpyxl") as book:
        grades_frame(snap).to_excel(book, sheet_name="grades", index=False)
        summary_frame(snap).to_excel(book, sheet_name="summary", index=False)
        points_frame(snap).to_excel(book, sheet_name="points possible", index=False)


def _write_canvas(snap: GradebookSnapshot, path: Path, ctx: ExportContext) -> None:
    canvas_frame(snap, ctx.canvas_ids).to_csv(path, index=False)


def _write_moodle(snap: GradebookSnapshot, path: Path, ctx: ExportContext) -> None:
    moodle_frame(snap).to_csv(path, index=False)


@dataclass(frozen=True)
class ExportFormat:
    name: str
    filename: str
    description: str
    write: Callable[[GradebookSnapshot, Path, ExportContext], None]
    lms: bool = False  # an import file: pending manual grades are left empty


FORMATS: Mapping[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("csv", "grades.csv", "one row per student, every check", _write_csv),
        ExportFormat("xlsx", "grades.xlsx", "the same, plus summary and points", _write_xlsx),
        ExportFormat("canvas", "canvas.csv", "Canvas gradebook import", _write_canvas, True),
        ExportFormat("moodle", "moodle.csv", "Moodle grade import (CSV)", _write_moodle, True),
    )
}


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    files: tuple[Path, ...]
    warnings: tuple[str, ...] = ()
    refreshed: int | None = None  # stored penalties changed by a refresh, if one ran

    def format(self) -> str:
        lines = []
        if self.refreshed is not None:
            lines.append(f"late penalties re-applied: {self.refreshed} changed")
        lines.append(f"wrote {len(self.files)} files to {self.out_dir}:")
        lines += [f"  {p.name}" for p in self.files]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def stale_penalties(snap: GradebookSnapshot, policy: LatePolicy) -> list[SubmissionRecord]:
    """Submissions whose stored penalty is not what ``policy`` gives on today's score.

    nbgrader computes the penalty once, at autograde; a written answer graded by hand
    afterwards changes the score but not the penalty.
    """
    stale = []
    for rec in snap.submissions:
        if not _submitted(rec):
            continue
        expected = policy.penalty(rec.raw_score, rec.seconds_late) if rec.seconds_late else 0.0
        if abs(expected - rec.penalty) > 1e-6:
            stale.append(rec)
    return stale


def _warnings(
    snap: GradebookSnapshot, formats: Sequence[ExportFormat], policy: LatePolicy | None
) -> list[str]:
    out = []
    if policy is not None:
        for rec in stale_penalties(snap, policy):
            expected = policy.penalty(rec.raw_score, rec.seconds_late)
            out.append(
                f"{rec.lab}/{rec.student}: stored late penalty {rec.penalty:g}, but "
                f"{POLICY_FILE} gives {expected:g} on the current score {rec.raw_score:g} "
                "(graded by hand after autograde?); re-apply it with "
                "`autograder export --refresh-late-penalties`"
            )
    lms = [f.filename for f in formats if f.lms]
    if lms:
        for lab in snap.labs:
            pending = [r.student for r in snap.of_lab(lab.name) if r.status == "needs manual grade"]
            if pending:
                out.append(
                    f"{lab.name}: left empty in {', '.join(lms)} until graded by hand in the "
                    f"formgrader: {', '.join(pending)}"
                )
    if any(f.name == "moodle" for f in formats):
        no_email = [s.id for s in snap.students if not s.contact]
        if no_email:
            out.append(
                "moodle.csv: no email for " + ", ".join(no_email) + "; map users from Username"
            )
    return out


def export_gradebook(
    course: Path,
    formats: Sequence[str] = ("all",),
    out_dir: Path | None = None,
    *,
    db_url: str | None = None,
    labs: list[str] | None = None,
    refresh_penalties: bool = False,
    canvas_ids: Mapping[str, str] | None = None,
) -> ExportResult:
    """Write the chosen formats, ``summary.csv`` and ``distribution.png`` to ``out_dir``.

    ``out_dir`` defaults to ``COURSE/exports`` (``COURSE/grades.csv`` is nbgrader's own
    export). ``refresh_penalties`` first re-applies the course's late policy to the stored
    penalties (:func:`autograder.grading.late.refresh_late_penalties`). ``canvas_ids``
    (lab -> Canvas assignment id) names Canvas' columns so that the import fills those
    assignments instead of creating new ones.
    """
    root = Path(course).resolve()
    if not root.is_dir():
        raise ConfigError(f"no course directory at {root}")
    if db_url is None:
        if not (root / "gradebook.db").is_file():
            raise ConfigError(
                f"no gradebook at {root / 'gradebook.db'}: grade the course first "
                "(autograder grade COURSE_DIR, or nbgrader autograde)"
            )
        db_url = f"sqlite:///{root / 'gradebook.db'}"
    chosen = _formats(formats)
    policy = load_late_policy(root)
    has_policy = (root / POLICY_FILE).is_file()

    refreshed = refresh_late_penalties(db_url, policy) if refresh_penalties else None
    snap = read_gradebook(db_url, labs, course=root)
    unknown = sorted(set(labs or ()) - {lab.name for lab in snap.labs})
    if unknown:
        raise ConfigError(f"not in the gradebook: {', '.join(unknown)}")

    out = Path(out_dir) if out_dir is not None else root / "exports"
    out.mkdir(parents=True, exist_ok=True)
    files = []
    ctx = ExportContext(dict(canvas_ids or {}))
    for fmt in chosen:
        fmt.write(snap, out / fmt.filename, ctx)
        files.append(out / fmt.filename)
    summary_frame(snap).to_csv(out / SUMMARY_FILE, index=False)
    plot_distribution(snap, out / PLOT_FILE)
    files += [out / SUMMARY_FILE, out / PLOT_FILE]
    warnings = _warnings(snap, chosen, policy if has_policy else None)
    return ExportResult(out, tuple(files), tuple(warnings), refreshed)


def _formats(names: Sequence[str]) -> list[ExportFormat]:
    if not names or "all" in names:
        return list(FORMATS.values())
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise ConfigError(
            f"unknown export format(s) {', '.join(unknown)} (known: {', '.join(FORMATS)}, all)"
        )
    return [FORMATS[n] for n in dict.fromkeys(names)]
