"""Read grades back from nbgrader's gradebook as pandas tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["check_table", "format_table"]


def check_table(
    db_url: str, labs: list[str] | None = None, *, include_missing: bool = True
) -> pd.DataFrame:
    """One row per (student, lab): score per graded cell, total and max.

    With ``include_missing``, a student with no submission for a lab gets a row marked
    ``missing`` (what a TA wants to see); without it only submissions are listed.

    Read from nbgrader's own Gradebook API, so it shows exactly what ``nbgrader export``
    and the formgrader see (manual overrides included).
    """
    import pandas as pd
    from nbgrader.api import Gradebook

    rows = []
    by_lab: dict[str, list[str]] = {}  # graded cells of each lab, in display order
    with Gradebook(db_url) as gb:
        for assignment in gb.assignments:
            if labs and assignment.name not in labs:
                continue
            for student in gb.students:
                try:
                    sub = gb.find_submission(assignment.name, student.id)
                except Exception:  # nbgrader's MissingEntry: not submitted
                    if not include_missing:
                        continue
                    rows.append(
                        {
                            "student": student.id,
                            "lab": assignment.name,
                            "status": "missing",
                            "total": 0.0,
                            "max": assignment.max_score,
                        }
                    )
                    continue
                row: dict[str, object] = {"student": student.id, "lab": assignment.name}
                for nb in sub.notebooks:
                    for grade in sorted(nb.grades, key=lambda g: _order(assignment.name, g.name)):
                        if grade.max_score:
                            # An answer waiting for its grader has no score yet, not zero.
                            pending = grade.auto_score is None and grade.manual_score is None
                            row[grade.name] = None if pending else grade.score
                            if grade.name not in by_lab.setdefault(assignment.name, []):
                                by_lab[assignment.name].append(grade.name)
                row["total"] = sub.score
                row["max"] = sub.max_score
                row["status"] = "needs manual grade" if sub.needs_manual_grade else "graded"
                rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    first = ["student", "lab"]
    last = ["total", "max", "status"]
    middle = [c for c in frame.columns if c not in first + last]
    frame[middle] = frame[middle].astype("float64")  # pending answers as NaN, not None
    frame = frame[first + middle + last].sort_values(first, ignore_index=True)
    frame.attrs["cells_by_lab"] = by_lab
    return frame


def _order(lab: str, grade_id: str) -> tuple[int, str]:
    """Rubric checks in rubric order, then other graded cells (written answers) by name."""
    from .rubric import lab_ids, load_rubric

    if lab in lab_ids():
        ids = [c.id for c in load_rubric(lab).checks]
        if grade_id in ids:
            return ids.index(grade_id), ""
    return 10_000, grade_id


def format_table(frame: pd.DataFrame) -> str:
    """Plain-text table for the terminal, one block per lab."""
    if frame.empty:
        return "(no submissions)"
    blocks = []
    for lab, part in frame.groupby("lab", sort=True):
        cells = frame.attrs.get("cells_by_lab", {}).get(lab)
        keep = ["student", *cells, "total", "max", "status"] if cells else list(part.columns)
        part = part[[c for c in keep if c in part.columns]]
        text = part.to_string(index=False, float_format="{:g}".format, na_rep="-")
        blocks.append(f"== {lab} ==\n{text}")
    return "\n\n".join(blocks)
