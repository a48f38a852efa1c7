"""Which rubric scored each submission, kept in the gradebook's own database.

nbgrader's tables have no place for it, so a table of this grader's sits beside them
(``autograder_scoring``: lab, student, notebook, rubric version, when), in the same
database (SQLite or PostgreSQL, through SQLAlchemy as nbgrader's are). :class:`RecordRubric`
writes it in the autograde pipeline, after nbgrader saved the grades, on every path that
autogrades (the batch's replay, the formgrader, grading on submit); the exports read it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from nbformat import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor, SaveAutoGrades

__all__ = ["TABLE", "RecordRubric", "read_rubric_versions", "record_rubric_version"]

TABLE = "autograder_scoring"


def _table(metadata: Any) -> Any:
    from sqlalchemy import Column, DateTime, String, Table

    return Table(
        TABLE,
        metadata,
        Column("lab", String(128), primary_key=True),
        Column("student", String(128), primary_key=True),
        Column("notebook", String(128), primary_key=True),
        Column("rubric", String(160), nullable=False),
        Column("scored_at", DateTime, nullable=False),
    )


def _engine(db_url: str) -> tuple[Any, Any]:
    from sqlalchemy import MetaData, create_engine

    engine = create_engine(db_url)
    table = _table(MetaData())
    table.create(engine, checkfirst=True)
    return engine, table


def record_rubric_version(db_url: str, lab: str, student: str, notebook: str, version: str) -> None:
    """Through a gradebook's own session, so that the record joins whatever transaction
    nbgrader's writes of the same autograde are in (the batch's replay makes one)."""
    from nbgrader.api import Gradebook
    from sqlalchemy import MetaData

    table = _table(MetaData())
    key = (table.c.lab == lab) & (table.c.student == student) & (table.c.notebook == notebook)
    with Gradebook(db_url) as gb:
        try:  # one transaction: replaced whole
            table.create(gb.db.connection(), checkfirst=True)
            gb.db.execute(table.delete().where(key))
            gb.db.execute(
                table.insert().values(
                    lab=lab,
                    student=student,
                    notebook=notebook,
                    rubric=version,
                    scored_at=datetime.now(UTC).replace(tzinfo=None),
                )
            )
            gb.db.commit()
        except Exception:
            gb.db.rollback()
            raise


def read_rubric_versions(db_url: str) -> dict[tuple[str, str], str]:
    """(lab, student) -> the rubric version that scored it (one per lab: its notebook's)."""
    engine, table = _engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(table.select()).fetchall()
    finally:
        engine.dispose()
    return {(r.lab, r.student): r.rubric for r in rows}


class RecordRubric(NbGraderPreprocessor):
    """Record in the gradebook which rubric version scored this notebook."""

    runs_after: ClassVar[tuple[type, ...]] = (SaveAutoGrades,)

    def preprocess(self, nb: NotebookNode, resources: Any) -> tuple[NotebookNode, Any]:
        result = resources.get("autograder", {}).get("result")
        if result is None or not result.rubric:
            return nb, resources
        info = resources["nbgrader"]
        record_rubric_version(
            info["db_url"], info["assignment"], info["student"], info["notebook"], result.rubric
        )
        self.log.info("%s scored with rubric %s", info["notebook"], result.rubric)
        return nb, resources
