"""Stored executions, replayed inside nbgrader's own ``autograde``.

A worker stores what it produced for a submission (its executed cells, the captured
outputs, the saved model and capture record, and each rubric version's result) under
``<course>/.autograder/executed/<key>``, where the key (:func:`execution_key`) covers the
submission, what decides its execution and the sanitized notebook, not the rubric's
scoring: a threshold change scores the stored model again (``results/<version>.json``)
without running the notebook.
The coordinator then runs nbgrader's real ``autograde`` with :class:`ReplayExecute` in place of
``GraderExecute`` (:func:`replay_api`): it finds the stored execution and replays it, so the
gradebook, the autograded notebook and the feedback are exactly what a serial
``nbgrader autograde`` writes, from a single writer. Its sanitizing steps, which the worker
ran already, run only where nothing stored is found (the notebook is then executed here).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbformat import NotebookNode, from_dict
from traitlets import Bool, List, Unicode

from autograder.errors import GradingError
from autograder.fstree import copy_files, write_fresh
from autograder.grading.execute import GraderExecute
from autograder.grading.preprocessors import autograde_preprocessors
from autograder.results import GradingResult
from autograder.rubric import rubric_version

__all__ = [
    "ReplayExecute",
    "cache_dir",
    "execution_key",
    "has_result",
    "notebook_digest",
    "one_engine",
    "one_transaction",
    "replay_api",
    "store_execution",
    "store_result",
    "stored_artifacts",
    "warm_replay",
]


def notebook_digest(data: bytes) -> str:
    """A submitted notebook's bytes as a worker read them: the coordinator replays that
    worker's execution only while the file still holds the same."""
    return hashlib.sha256(data).hexdigest()


def execution_key(nb: NotebookNode, submission_digest: str) -> str:
    """One submission (its files and the grader's inputs: ``Submission.digest``) and the
    sanitized notebook as execution sees it (cell kinds, sources, nbgrader metadata).

    Scoped to the submission: two students' identical notebooks are each run, not one
    replayed for the other."""
    h = hashlib.sha256(submission_digest.encode())
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        h.update(json.dumps([cell.cell_type, cell.source, meta], sort_keys=True).encode())
    return h.hexdigest()


def cache_dir(course_root: Path) -> Path:
    return course_root / ".autograder" / "executed"


def _result_file(entry: Path, version: str) -> Path:
    return entry / "results" / f"{version.replace('@', '-')}.json"


def has_result(entry: Path, lab: str) -> bool:
    """Whether ``entry`` holds a result scored with ``lab``'s current rubric."""
    return _result_file(entry, rubric_version(lab)).is_file()


def stored_artifacts(entry: Path) -> Path | None:
    """The saved model and capture record of a stored execution (None: stored without)."""
    folder = entry / "artifacts"
    return folder if folder.is_dir() else None


def store_result(entry: Path, result: GradingResult) -> None:
    """One more scoring of a stored execution, under its rubric version."""
    target = _result_file(entry, result.rubric or rubric_version(result.lab))
    target.parent.mkdir(exist_ok=True)
    staged = target.with_name(f".{target.name}.new")
    write_fresh(staged, result.to_json())
    staged.replace(target)


def store_execution(
    entry: Path,
    nb: NotebookNode,
    resources: dict[str, Any],
    result: GradingResult,
    artifacts: Path | None = None,
) -> None:
    """The executed cells, the capture's outputs, the model and capture record
    (``artifacts``) and the result, under ``entry``, whole or not at all."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    (tmp / "cells.json").write_text(json.dumps(nb.cells))
    extra = {
        "capture_outputs": resources.get("autograder", {}).get("capture_outputs", []),
        "metadata": nb.metadata,  # the sanitizing's kernelspec, the execution's language
    }
    (tmp / "meta.json").write_text(json.dumps(extra))
    if artifacts is not None:
        copy_files(artifacts, tmp / "artifacts")
    store_result(tmp, result)
    try:
        tmp.rename(entry)  # atomic: a killed worker leaves no half entry
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another worker stored the same execution


class ReplayExecute(GraderExecute):
    """``GraderExecute`` that replays an execution stored by a batch worker when one
    matches the notebook, and executes as usual when none does.

    nbgrader's sanitizing pass before it is left empty (:func:`replay_api`): the worker
    sanitized the notebook it executed, and a replay takes its cells and metadata. The
    steps (``sanitize_steps``) run here instead, on a notebook to execute, and on one to
    find the execution of when the worker did not name it (``execution_key``)."""

    replay_dir = Unicode("", help="Folder of stored executions").tag(config=True)
    submission_digest = Unicode("", help="Submission.digest of the one being graded").tag(
        config=True
    )
    execute_missing = Bool(True, help="Execute a notebook with no stored result").tag(config=True)
    execution_key = Unicode("", help="The stored execution's key, as its worker named it").tag(
        config=True
    )
    sanitize_steps: List[Any] = List(help="nbgrader's sanitizing preprocessors, run here").tag(
        config=True
    )

    def _sanitized(self, nb: NotebookNode, resources: Any) -> NotebookNode:
        for step in self.sanitize_steps:
            nb, resources = step(parent=self).preprocess(nb, resources)
        return nb

    def preprocess(self, nb: NotebookNode, resources: Any) -> tuple[NotebookNode, Any]:
        sanitized = not self.execution_key
        if sanitized:  # found as the worker keyed it: by the notebook it sanitized
            nb = self._sanitized(nb, resources)
        key = self.execution_key or execution_key(nb, self.submission_digest)
        entry = Path(self.replay_dir) / key
        result = _result_file(entry, rubric_version(resources["nbgrader"]["assignment"]))
        if not self.replay_dir or not result.is_file():
            if not self.execute_missing:
                raise GradingError("no stored result to replay, and this run executes nothing")
            self.log.warning("no stored execution for this notebook: executing it here")
            return super().preprocess(
                nb if sanitized else self._sanitized(nb, resources), resources
            )
        nb.cells = [from_dict(c) for c in json.loads((entry / "cells.json").read_text())]
        meta = json.loads((entry / "meta.json").read_text())
        if "metadata" in meta:  # stored before it was: the notebook's, unsanitized
            nb.metadata = from_dict(meta["metadata"])
        resources.setdefault("autograder", {}).update(
            result=GradingResult.from_json(result.read_text()),
            capture_outputs=meta["capture_outputs"],
        )
        return nb, resources


def replay_api(course: Any, cache: Path) -> Any:
    from nbgrader.apps import NbGraderAPI
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import ClearOutput

    from autograder._runtime import ensure_tool_path

    config = course.config()
    config.Autograde.autograde_preprocessors = [
        ReplayExecute if step is GraderExecute else step for step in autograde_preprocessors()
    ]
    # The course's sanitizing steps, moved from nbgrader's first pass into the replay. That
    # pass keeps ClearOutput (its outputs are replaced by the replay's): after no step at
    # all nbconvert's one validation fails (UnboundLocalError in Exporter._preprocess).
    config.ReplayExecute.sanitize_steps = list(Autograde(config=config).sanitize_preprocessors)
    config.Autograde.sanitize_preprocessors = [ClearOutput]
    config.ReplayExecute.replay_dir = str(cache)
    # The notebook is validated once, after the last preprocessor, not after each of them
    # (nbconvert's option; seventeen validations a submission): invalid still fails.
    config.Exporter.optimistic_validation = True
    ensure_tool_path()
    return NbGraderAPI(config=config)


@dataclass
class _Shared:
    users: int = 0
    engine: Any = None  # made by the first gradebook that asks
    tables_ready: bool = False  # nbgrader's tables found or made through this engine
    connection: Any = None  # while one_transaction lasts: the one every gradebook joins
    courses: set[str] = field(default_factory=set)  # found or made, and committed


# Gradebook URL -> its shared engine, in this process only: a forked child starts with none.
_SHARED: dict[str, _Shared] = {}
os.register_at_fork(after_in_child=_SHARED.clear)


def _create_engine(url: Any, *args: Any, **kwargs: Any) -> Any:
    import sqlalchemy

    shared = _SHARED.get(str(url))
    if shared is None:
        return sqlalchemy.create_engine(url, *args, **kwargs)
    if shared.engine is None:
        shared.engine = sqlalchemy.create_engine(url, *args, **kwargs)
        if shared.engine.dialect.name == "sqlite":
            _explicit_begin(shared.engine)
    return shared.engine


def _explicit_begin(engine: Any) -> None:
    """SQLAlchemy's recipe for the sqlite3 driver, whose own transaction handling leaves
    a SAVEPOINT outside any transaction, where releasing it commits: the driver in
    autocommit, each transaction begun by SQLAlchemy, so that savepoints nest.
    ``one_transaction``'s is BEGIN IMMEDIATE: it writes anyway, and holding the write
    lock from the start means it waits for another writer instead of failing midway."""
    import sqlalchemy

    @sqlalchemy.event.listens_for(engine, "connect")
    def _autocommit(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        immediate = connection.info.pop("begin_immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _shared_of(bind: Any) -> _Shared | None:
    return next((s for s in _SHARED.values() if s.engine is not None and s.engine is bind), None)


def _sessionmaker(bind: Any = None, **kwargs: Any) -> Any:
    """nbgrader's gradebook's sessions; inside ``one_transaction``, on its connection,
    each session's commit a savepoint released and its rollback one rolled back to."""
    from sqlalchemy.orm import sessionmaker

    shared = _shared_of(bind)
    if shared is None or shared.connection is None:
        return sessionmaker(bind=bind, **kwargs)
    return sessionmaker(bind=shared.connection, join_transaction_mode="create_savepoint", **kwargs)


class _TablesReady:
    """What nbgrader's ``Gradebook`` asks an inspector (whether the database has tables yet),
    answered without a query for a shared engine whose tables were found or made already."""

    def get_table_names(self) -> list[str]:
        import nbgrader.api

        return sorted(nbgrader.api.Base.metadata.tables)


def _inspect(subject: Any) -> Any:
    import sqlalchemy

    shared = _shared_of(subject)
    if shared and shared.tables_ready:
        return _TablesReady()
    return sqlalchemy.inspect(shared.connection if shared and shared.connection else subject)


def _create_all(bind: Any = None, **kwargs: Any) -> None:
    import nbgrader.api

    shared = _shared_of(bind)
    if shared and shared.tables_ready:
        return
    metadata = nbgrader.api.Base.metadata
    if shared and shared.connection is not None:  # not beside it: it holds the write lock
        bind = shared.connection
    type(metadata).create_all(metadata, bind=bind, **kwargs)
    if shared is not None:
        shared.tables_ready = True


_CHECK_COURSE: list[Any] = []  # nbgrader's own Gradebook.check_course, while patched


def _check_course(gradebook: Any, course_id: str = "default_course", **kwargs: Any) -> Any:
    """nbgrader's, once per course for a shared engine: every gradebook opened looks its
    course's row up (a query, and a savepoint inside ``one_transaction``), and nothing the
    grader does removes it. Remembered only once committed: made inside a transaction
    that is rolled back, it would be gone."""
    shared = _shared_of(gradebook.engine)
    if shared is not None and course_id in shared.courses and not kwargs:
        return None  # its only caller, Gradebook.__init__, reads nothing back
    course = _CHECK_COURSE[0](gradebook, course_id, **kwargs)
    if shared is not None and shared.connection is None:
        shared.courses.add(course_id)
    return course


@contextlib.contextmanager
def one_engine(db_url: str) -> Iterator[None]:
    """Every nbgrader ``Gradebook`` of ``db_url`` in this process shares one SQLAlchemy
    engine, while this lasts.

    nbgrader's autograde opens about ten gradebooks per submission (one per step and per
    preprocessor), each with an engine of its own, and an engine keeps the queries it
    compiled: a fresh one compiles them all again. Each gradebook's ``close`` still
    disposes the engine's connections, so no connection, and no lock on the database,
    outlives the step that opened it (outside ``one_transaction``). Its tables are
    looked for (a query each, and made if missing) by the first gradebook only, not again
    by each, and so is its course's row. A process forked from this one makes its own
    engine.
    """
    import nbgrader.api
    import sqlalchemy
    import sqlalchemy.orm

    shared = _SHARED.setdefault(db_url, _Shared())
    shared.users += 1
    nbgrader.api.create_engine = _create_engine
    nbgrader.api.inspect = _inspect
    nbgrader.api.sessionmaker = _sessionmaker
    nbgrader.api.Base.metadata.create_all = _create_all
    if not _CHECK_COURSE:
        _CHECK_COURSE.append(nbgrader.api.Gradebook.check_course)
        nbgrader.api.Gradebook.check_course = _check_course
    try:
        yield
    finally:
        shared.users -= 1
        if shared.users == 0:
            _SHARED.pop(db_url, None)
            if shared.engine is not None:
                shared.engine.dispose()
        if not _SHARED:
            nbgrader.api.create_engine = sqlalchemy.create_engine
            nbgrader.api.inspect = sqlalchemy.inspect
            nbgrader.api.sessionmaker = sqlalchemy.orm.sessionmaker
            with contextlib.suppress(AttributeError):  # the class's own again
                del nbgrader.api.Base.metadata.create_all
            nbgrader.api.Gradebook.check_course = _CHECK_COURSE.pop()


@contextlib.contextmanager
def one_transaction(db_url: str) -> Iterator[None]:
    """``one_engine(db_url)``, and every nbgrader ``Gradebook`` of ``db_url`` opened
    while this lasts works in one database transaction, committed when it ends and rolled
    back if it raises.

    nbgrader's autograde of one submission commits some twenty times (a grade cell at a
    time), and each commit of a SQLite gradebook waits for the disk; here each gradebook's
    commit releases a savepoint instead (its rollback rolls back to one), and the
    submission's grades reach the database at once, whole or not at all. The write lock
    is held from the start to the end (another writer waits for it, readers do not)."""
    with one_engine(db_url), _create_engine(db_url, echo=False, future=True).connect() as conn:
        shared = _SHARED[db_url]
        conn.info["begin_immediate"] = True
        try:
            with conn.begin():
                shared.connection = conn
                try:
                    yield
                finally:
                    shared.connection = None
        finally:
            conn.info.pop("begin_immediate", None)


class _RolledBack(Exception):
    pass


# A student id no course uses (nbgrader's ids are names a shell can take).
_WARM_STUDENT = "autograder warm-up"


def warm_replay(course: Any, labs: list[str]) -> None:
    """In the coordinator, while its workers warm up: what its first replay would pay
    once (nbformat's compiled schema, the gradebook's object mapping, its queries and
    writes compiled, the Markdown renderer the feedback's sanitizing uses), nothing
    written: the writes are those of a submission's replay, in a transaction rolled back."""
    from nbformat import reads
    from nbformat.validator import get_validator
    from nbgrader.api import Gradebook

    from autograder.grading.sanitize import neutralise_notebook
    from autograder.rubric import load_rubric

    get_validator(version=4, version_minor=5)
    with Gradebook(course.db_url, course.course_id) as gb:
        for lab in labs:
            for notebook in gb.find_assignment(lab).notebooks:
                list(notebook.grade_cells)
                list(notebook.source_cells)
    for lab in labs:
        source = course.root / "source" / lab / f"{load_rubric(lab).notebook}.ipynb"
        if source.is_file():
            neutralise_notebook(reads(source.read_text(), as_version=4))
    with contextlib.suppress(_RolledBack), one_transaction(course.db_url):
        with Gradebook(course.db_url, course.course_id) as gb:
            gb.update_or_create_student(_WARM_STUDENT)
            for lab in labs:
                gb.update_or_create_submission(lab, _WARM_STUDENT)
                for notebook in gb.find_assignment(lab).notebooks:
                    for cell in notebook.grade_cells:
                        grade = gb.find_grade(cell.name, notebook.name, lab, _WARM_STUDENT)
                        grade.auto_score, grade.needs_manual_grade = 0.0, False
                    for cell in notebook.solution_cells:
                        comment = gb.find_comment(cell.name, notebook.name, lab, _WARM_STUDENT)
                        comment.auto_comment = None
                    gb.db.commit()
                gb.find_submission(lab, _WARM_STUDENT).total_seconds_late  # noqa: B018
        raise _RolledBack
