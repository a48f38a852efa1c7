"""Read grades back from nbgrader's gradebook as pandas tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["check_table", "format_table"]


def check_table(db_url: str, labs: list[str] | None = None) -> pd.DataFrame:
    """One row per (student, lab): score per graded cell, total and max.

    Read from nbgrader's own Gradebook API, so it shows exactly what ``nbgrader export``
    and the formgrader see (manual overrides included).
    """
    import pandas as pd
    from nbgrader.api import Gradebook

    rows = []
    with Gradebook(db_url) as gb:
        for assignment in gb.assignments:
            if labs and assignment.name not in labs:
                continue
            for student in gb.students:
                try:
                    sub = gb.find_submission(assignment.name, student.id)
                except Exception:  # nbgrader's MissingEntry: not submitted
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
                    for grade in sorted(nb.grades, key=lambda g: g.cell_id or 0):
                        if grade.max_score:
                            row[grade.name] = grade.score
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
    return frame[first + middle + last].sort_values(first, ignore_index=True)


def format_table(frame: pd.DataFrame) -> str:
    """Plain-text table for the terminal, one block per lab."""
    if frame.empty:
        return "(no submissions)"
    blocks = []
    for lab, part in frame.groupby("lab", sort=True):
        part = part.dropna(axis=1, how="all").drop(columns="lab")
        blocks.append(f"== {lab} ==\n" + part.to_string(index=False, float_format="{:g}".format))
    return "\n\n".join(blocks)
