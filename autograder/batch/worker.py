"""What runs on a batch worker (a local process or a Dask worker): its warm-up and the
execution of one submission at a time.

:func:`warm_worker` (once per worker) and :func:`execute_submission` (per submission) are
top-level functions so that a ``ProcessPoolExecutor`` or a Dask cluster can ship them by
name. A submission is sanitized with nbgrader's own sanitizing preprocessors, executed
(``GraderExecute``, under the sandbox's limits) and its saved model evaluated in the worker's
warm evaluator; the execution is stored for the coordinator to replay
(:mod:`autograder.batch.replay`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from nbformat import NotebookNode, reads

from autograder._runtime import compile_output_checks, sqlite_file
from autograder.batch.replay import (
    cache_dir,
    execution_key,
    has_result,
    notebook_digest,
    one_engine,
    store_execution,
    store_result,
    stored_artifacts,
)
from autograder.course import Course
from autograder.fstree import copy_files, remove_tree
from autograder.grading.execute import GraderExecute
from autograder.rubric import load_rubric
from autograder.sandbox.files import grader_temp
from autograder.settings import threads_environment

__all__ = ["execute_submission", "release_worker", "warm_worker"]


_EVALUATOR: Any = None


def _evaluator(labs: tuple[str, ...]) -> Any:
    """This worker process's warm evaluator (started on first use, kept for the batch)."""
    global _EVALUATOR
    from autograder.grading.evaluation_server import Evaluator

    if _EVALUATOR is None:
        from autograder._runtime import at_exit

        _EVALUATOR = Evaluator(labs)
        at_exit(_EVALUATOR.close)  # waited for, never orphaned, when the worker ends
    return _EVALUATOR


_SNAPSHOTS: dict[str, str] = {}  # a course's gradebook -> this worker's copy
_HELD = contextlib.ExitStack()  # each copy's folder, and one engine for its gradebooks


def _gradebook_read(course: Course) -> str:
    """The gradebook this worker's sanitizing reads (the lab's notebooks and source cells,
    written when the lab was generated, not while it is graded). For SQLite, a copy taken
    once per batch, at the worker's warm-up or first submission: the coordinator, the one
    writer, then never waits for the workers' reads to end before it commits, nor they
    for its commits (in SQLite's busy handler, sleeps of up to 100 ms each), however many
    workers read. Any other database, and a copy that failed: the gradebook itself."""
    url = course.db_url
    if url in _SNAPSHOTS:
        return _SNAPSHOTS[url]
    database = sqlite_file(url)
    if database is None or not database.is_file():
        return url
    folder = grader_temp("gradebook")
    copy = folder / "gradebook.db"
    try:
        # Read-only, by a URI that quotes whatever the course's path holds ("?", "#", "%").
        source = sqlite3.connect(Path(database).resolve().as_uri() + "?mode=ro", uri=True)
        try:
            target = sqlite3.connect(copy)
            try:
                source.backup(target)  # a consistent copy, whatever is being written
            finally:
                target.close()
        finally:
            source.close()
    except sqlite3.Error as exc:  # read the gradebook itself, as before
        import logging

        logging.getLogger(__name__).warning("the gradebook could not be copied: %s", exc)
        remove_tree(folder)
        return url
    if not _SNAPSHOTS:
        from autograder._runtime import at_exit

        at_exit(_drop_snapshots)
    _SNAPSHOTS[url] = f"sqlite:///{copy}"
    _HELD.callback(remove_tree, folder)
    _HELD.enter_context(one_engine(_SNAPSHOTS[url]))  # read by this worker alone
    return _SNAPSHOTS[url]


def _drop_snapshots() -> None:
    _SNAPSHOTS.clear()
    _HELD.close()  # engines disposed, then folders removed


def _resources(course: Course, lab: str, notebook: str, student: str) -> dict[str, Any]:
    """What nbgrader's preprocessors read about the notebook they work on."""
    return {
        "nbgrader": {
            "student": student,
            "assignment": lab,
            "notebook": notebook,
            "db_url": _gradebook_read(course),
            "course_id": course.course_id,
        }
    }


def _warm_sanitizing(course: Course, labs: tuple[str, ...], config: Any) -> None:
    """Each lab's source notebook read and sanitized, nothing written: what a worker's
    first submission would otherwise pay once (nbformat's compiled schema, the gradebook's
    object mapping, the steps' imports)."""
    for lab in labs:
        notebook = load_rubric(lab).notebook
        path = course.root / "source" / lab / f"{notebook}.ipynb"
        if path.is_file():
            resources = _resources(course, lab, notebook, "")
            _sanitize(reads(path.read_text(), as_version=4), resources, config)


def _sanitize(nb: NotebookNode, resources: dict[str, Any], config: Any) -> NotebookNode:
    from nbgrader.converters import Autograde

    for step in Autograde(config=config).sanitize_preprocessors:
        nb, resources = step(config=config).preprocess(nb, resources)
    return nb


_THREADS: dict[str, int] = {}  # this worker's TensorFlow threads, set by warm_worker

# This worker's start-up, reported with its first submission: its seconds, and whether its
# fork server was one the coordinator started ahead.
_STARTUP: dict[str, float] = {}

# The batch's submissions that no worker has started yet, shared by a local pool's workers
# (a multiprocessing Value), None where the worker cannot know (a Dask cluster's).
_UNSTARTED: list[Any] = [None]


def _starting_one() -> None:
    counter = _UNSTARTED[0]
    if counter is not None:
        with counter.get_lock():
            counter.value -= 1


def _more_to_come() -> bool:
    """Whether a submission may still come to this worker: none can once every one of the
    batch's has been started (by this worker or another). A kernel started ahead for none
    would only take CPU from the last evaluations, then be stopped unused."""
    counter = _UNSTARTED[0]
    return counter is None or counter.value > 0


def _worker_config(course: Course) -> Any:
    """The course's nbgrader config as a worker grades with it: one notebook after another,
    so the next kernel starts while a submission is evaluated and recorded."""
    config = course.config()
    config.GraderExecute.spare_kernel = True
    config.GraderExecute.spare_kernel_later = True  # once the evaluator has the capture
    return config


def warm_worker(
    course_root: str,
    labs: tuple[str, ...],
    threads: int,
    kernels: bool = True,
    unstarted: Any = None,
    claims: Any = None,
) -> float:
    """In a worker, before its first submission: the evaluator's TensorFlow and data, the
    grader's imports, the sandbox's set-up and the first kernel, done once and waited
    for, so that no submission carries them. Returns the seconds it took. ``unstarted``:
    the batch's count of submissions no worker has started (:func:`_more_to_come`);
    ``claims``: the count of fork servers the coordinator started ahead that its workers
    have claimed (a multiprocessing Value), None where it started none."""
    start = time.monotonic()
    _UNSTARTED[0] = unstarted
    _THREADS["n"] = threads  # a cluster's worker: sized for its own machine, not the coordinator's
    os.environ.update(threads_environment(threads))
    try:
        from nbgrader.converters import Autograde  # noqa: F401

        from autograder.sandbox.forked import claim_started_ahead, fork_server_info

        if claims is not None:
            with claims.get_lock():
                index, claims.value = claims.value, claims.value + 1
            claim_started_ahead(index)
        if kernels:  # not for a batch that only re-scores stored models
            course = Course.open(Path(course_root))
            config = _worker_config(course)
            # Starts the kernels' fork server (or adopts the one started ahead for this
            # worker), which the evaluator is then forked from: TensorFlow imported once
            # in this worker, not twice.
            GraderExecute(config=config).start_kernel_ahead()
            info = fork_server_info() or {}
            _STARTUP["server_ahead"] = float(bool(info.get("started_ahead")))
            _warm_sanitizing(course, labs, config)
            compile_output_checks()  # else compiled as the first outputs come
        evaluator = _evaluator(labs)
        evaluator.warm()
        evaluator.wait_ready()
    except Exception as exc:  # the submissions then pay for what is missing, nothing worse
        import logging

        logging.getLogger(__name__).warning("warming the worker up failed: %s", exc)
    _STARTUP["s"] = time.monotonic() - start
    return _STARTUP["s"]


def release_worker() -> None:
    """In a worker that outlives the batch (a Dask cluster's): stop the kernel it started
    ahead for a next submission, and free its sandbox; stop its evaluator, which holds the
    held-out data as this batch read them (the next batch's evaluator reads them again),
    and its fork server; remove its copy of the gradebook. Nothing of the batch stays."""
    global _EVALUATOR
    from autograder.sandbox.forked import stop_fork_server
    from autograder.sandbox.spare import discard_spare_kernel

    discard_spare_kernel()
    if _EVALUATOR is not None:
        _EVALUATOR.close()
        _EVALUATOR = None
    stop_fork_server()
    _drop_snapshots()


def execute_submission(
    course_root: str,
    lab: str,
    student: str,
    digest: str,
    threads: int,
    evaluate_only: bool = False,
) -> dict[str, Any]:
    """In a worker: sanitize, execute and evaluate one submission; store the execution.

    ``digest`` is the submission's execution digest (``Submission.execution_digest``). A
    stored execution is not run again: its saved model is scored with the current rubric
    when no result of that rubric version is stored. ``evaluate_only`` never executes: a
    submission without a stored execution is an error.

    Returns a plain dict (it crosses process and cluster boundaries):
    ``{"key", "notebook_digest", "worker_s", "cells_s", "error"}``.
    """
    start = time.monotonic()
    os.environ.update(threads_environment(_THREADS.get("n", threads)))
    # Started by warm_worker; else its imports and data loading overlap this execution.
    _evaluator((lab,)).warm()
    root = Path(course_root)
    course = Course.open(root)  # its own nbgrader_config.py, read as data
    rubric = load_rubric(lab)
    source = root / "submitted" / student / lab / f"{rubric.notebook}.ipynb"
    out: dict[str, Any] = {"key": None, "worker_s": 0.0, "cells_s": 0.0, "error": None}
    if "s" in _STARTUP:  # reported once per worker, with its first submission
        out["startup_s"] = _STARTUP.pop("s")
        if "server_ahead" in _STARTUP:
            out["server_ahead"] = _STARTUP.pop("server_ahead")
    _starting_one()
    try:
        data = source.read_bytes()  # hashed as read: the coordinator compares (_record)
        out["notebook_digest"] = notebook_digest(data)
        nb = reads(data.decode("utf-8"), as_version=4)
    except Exception as exc:
        out["error"] = f"the notebook could not be read: {type(exc).__name__}: {exc}"[:300]
        return out
    config = _worker_config(course)
    resources = _resources(course, lab, rubric.notebook, student)
    try:
        nb = _sanitize(nb, resources, config)
    except Exception as exc:
        out["error"] = f"sanitizing failed: {type(exc).__name__}: {exc}"[:300]
        return out
    out["sanitize_s"] = time.monotonic() - start
    key = execution_key(nb, digest)
    cache = cache_dir(root)
    cache.mkdir(parents=True, exist_ok=True)
    out["key"] = key
    entry = cache / key
    if entry.is_dir():
        begin = time.monotonic()
        if not has_result(entry, lab):
            stored = stored_artifacts(entry)
            if stored is None:
                out["error"] = "the stored execution has no saved model: grade it again"
                return out
            scratch = grader_temp(lab)
            try:
                copy_files(stored, scratch)
                store_result(entry, _evaluator((lab,)).evaluate(lab, scratch, timeout=600))
            finally:
                remove_tree(scratch)
        out["evaluate_s"] = time.monotonic() - begin
        out["worker_s"] = time.monotonic() - start
        return out
    if evaluate_only:
        out["error"] = "no stored execution to re-score: grade it without --evaluate-only"
        return out
    execute = GraderExecute(config=config)
    evaluator = _evaluator((lab,))
    # The evaluation's child is forked and warmed up while the cells run, not after them.
    execute.on_notebook_start = lambda **_: evaluator.prepare()
    work = grader_temp(lab)
    kept = grader_temp(lab)  # the model and capture record, kept with the execution
    ahead = False  # whether the next notebook's kernel was started
    try:
        # The student's other submitted files sit next to the notebook, as in nbgrader:
        # regular files only (no folders or links a student could shape against the grader).
        copy_files(source.parent, work)
        resources["metadata"] = {"path": str(work)}
        begin = time.monotonic()
        nb, resources = execute.preprocess(nb, resources)
        out["execute_s"] = time.monotonic() - begin
        out["cells_s"] = _cell_seconds(nb.cells)
        out["capture_s"] = _seconds(resources["autograder"].get("capture_timing", {}))
        out["kernel_ahead"] = float(bool(resources["autograder"].get("kernel_started_ahead")))
        out["kernel_forked"] = float(bool(resources["autograder"]["sandbox"].get("forked")))
        artifacts = Path(resources["autograder"]["artifacts"])
        begin = time.monotonic()
        try:
            copy_files(artifacts, kept)
            pending = _evaluator((lab,)).submit(lab, artifacts, timeout=600)
            ahead = True
            if _more_to_come():
                execute.start_kernel_ahead()  # the next notebook's, while this is evaluated
                out["next_kernel_ahead"] = 1.0
            else:
                out["next_kernel_ahead"] = 0.0
            result = pending()
        finally:
            remove_tree(artifacts)
        out["evaluate_s"] = time.monotonic() - begin
        out["evaluator_forked"] = float(_evaluator((lab,)).forked)
        store_execution(entry, nb, resources, result, kept)
    finally:
        if not ahead and _more_to_come():  # this one failed before its evaluation: the
            execute.start_kernel_ahead()  # next one's kernel still
        remove_tree(work)
        remove_tree(kept)
    out["worker_s"] = time.monotonic() - start
    return out


def _cell_seconds(cells: list[NotebookNode]) -> float:
    return sum(_seconds(cell.get("metadata", {}).get("execution", {})) for cell in cells)


def _seconds(timing: dict[str, str]) -> float:
    """A cell's run time from nbclient's execution timestamps (0 when it did not run)."""
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    return (_parse_time(end) - _parse_time(start)).total_seconds()


def _parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
