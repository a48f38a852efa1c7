"""Grade a whole class at once: submissions run in parallel workers, the gradebook is
written by one process.

:func:`grade_batch` finds the submissions (:mod:`autograder.batch.submissions`), hands the
changed ones to workers (:mod:`autograder.batch.worker`), local processes or the workers of a
Dask cluster (``dask.distributed``), and records each as it finishes: nbgrader's real
``autograde`` for that submission, replaying the worker's stored execution
(:mod:`autograder.batch.replay`), then the submission's state, so that a later run skips it
while the submission and the grader's inputs are unchanged and a killed batch resumes where it
stopped. One batch per course at a time, and one grading writing its grades at a time
(:mod:`autograder.course_lock`).

Local workers' fork servers are started before this process imports nbgrader and the
grader's execution (:func:`_start_servers_ahead`): their TensorFlow imports fill the cores
that those single-threaded imports would leave idle. This module imports those lazily.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autograder.batch.ordering import longest_first
from autograder.batch.submissions import (
    BatchSummary,
    Submission,
    SubmissionOutcome,
    already_graded,
    find_submissions,
    state_path,
)
from autograder.course_lock import one_batch, writing_grades
from autograder.errors import ConfigError
from autograder.fstree import remove_tree, write_fresh
from autograder.sandbox.accounts import clean_free_slots
from autograder.sandbox.files import remove_stale_temps
from autograder.sandbox.forked import (
    forking_wanted,
    hand_over_started_ahead,
    reap_started_ahead,
    start_servers_ahead,
)

__all__ = ["grade_batch", "threads_per_worker"]


@contextlib.contextmanager
def _executor(
    workers: int, scheduler: str | None, warm: tuple[Any, ...], tasks: int
) -> Iterator[tuple[Executor, str, int]]:
    """Worker processes, each warmed up (``warm_worker(*warm)``) before its first task;
    local ones also share the count of the ``tasks`` none of them has started."""
    from autograder.batch.worker import warm_worker

    if scheduler is None:
        from multiprocessing import Value

        unstarted = Value("i", tasks)  # counted down by the workers as they start each
        claims = Value("i", 0)  # the fork servers started ahead that workers have claimed
        with ProcessPoolExecutor(
            max_workers=workers, initializer=warm_worker, initargs=(*warm, unstarted, claims)
        ) as pool:
            yield pool, "local", workers
        return
    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler == "local":
        # Dask's scratch folder (and its lock files) would stay in /tmp after the batch.
        scratch = tempfile.mkdtemp(prefix="autograder-dask-")
        try:
            with dask.config.set({"temporary-directory": scratch}):
                cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                )
                with cluster, Client(cluster) as client:
                    _warm_dask(client, warm)
                    try:
                        yield client.get_executor(pure=False), "dask", workers
                    finally:
                        _release_dask(client)
        finally:
            remove_tree(Path(scratch))
        return
    with Client(scheduler) as client:
        n = len(client.scheduler_info().get("workers", {})) or workers
        _warm_dask(client, warm)
        try:
            yield client.get_executor(pure=False), "dask", n
        finally:
            _release_dask(client)


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """The coordinator's objects as they are now (its imports: some 150,000) left out of
    its garbage collections while the batch runs: a full collection passes over all of
    them (0.1 s each, inside some submission's replay), and in forked workers it would
    copy every page they share. Given back to the collector afterwards."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _start_servers_ahead(workers: int, threads: int) -> None:
    """One fork server per local worker, started now, before this process's heavy imports
    and its workers' fork, for the environment a worker's kernels will have (each worker
    claims one; a worker whose kernel environment differs starts its own, with a warning).
    Computed as a worker computes it: this process's environment as the workers will
    inherit it (the tool path put first, as the replay's set-up does), their threads, and
    TensorFlow quiet."""
    if not forking_wanted():
        return
    from autograder._runtime import ensure_tool_path, environment
    from autograder.sandbox.kernel import kernel_environment
    from autograder.settings import QUIET_TENSORFLOW, Limits, threads_environment

    ensure_tool_path()
    try:
        with environment({**threads_environment(threads), **QUIET_TENSORFLOW}):
            env = kernel_environment(Limits.from_env())
    except Exception as exc:  # the workers then start their own, as without this
        import logging

        logging.getLogger(__name__).warning("no fork server started ahead: %s", exc)
        return
    start_servers_ahead(env, workers)


def _release_dask(client: Any) -> None:
    """Each worker stops the kernel it started ahead: a cluster's workers outlive the
    batch, and a kernel waiting for a submission that never comes holds a sandbox."""
    from autograder.batch.worker import release_worker

    with contextlib.suppress(Exception):
        client.run(release_worker)


def _warm_dask(client: Any, warm: tuple[Any, ...]) -> None:
    """``warm_worker`` once on each worker of the cluster, with TensorFlow threads sized for
    that worker's machine (a worker that joins later warms up with its first submission,
    sized for the coordinator's)."""
    from autograder.batch.worker import warm_worker

    workers = client.scheduler_info().get("workers", {})
    cores = client.run(os.cpu_count)  # each worker's machine
    threads = threads_per_worker(workers, cores)
    course_root, labs, _, kernels = warm
    futures = [
        client.submit(
            warm_worker,
            course_root,
            labs,
            threads[a],
            kernels,
            workers=[a],
            allow_other_workers=False,
            pure=False,
        )
        for a in workers
    ]
    client.gather(futures)


def threads_per_worker(workers: dict[str, Any], cores: dict[str, Any]) -> dict[str, int]:
    """Per worker address, its TensorFlow threads: its machine's cores shared among the
    cluster's workers on that machine (``workers``: the scheduler's record of each, with
    its ``host``; ``cores``: what each reported as its machine's core count)."""
    per_host = Counter(str(w.get("host", a)) for a, w in workers.items())
    return {
        a: max(1, int(cores.get(a) or 1) // per_host[str(w.get("host", a))])
        for a, w in workers.items()
    }


def _reason(log: str) -> str:
    lines = log.strip().splitlines() or ["no log"]
    # The exception itself, not nbgrader's "Please see the above traceback" after it.
    raised = [
        ln
        for ln in lines
        if re.match(r"[\w.]+(Error|Exception): ", ln.strip()) and "NbGraderException" not in ln
    ]
    errors = [ln for ln in lines if "ERROR" in ln or "Error" in ln]
    return (raised or errors or lines)[-1].strip()[:300]


def grade_batch(
    course_root: Path,
    *,
    labs: list[str] | None = None,
    students: list[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    force: bool = False,
    progress: bool = True,
    evaluate_only: bool = False,
    by_cost: bool = True,
    warm_up: Callable[[], object] | None = None,
) -> BatchSummary:
    """Autograde every submission of ``labs`` in parallel; see the module's docstring.

    ``scheduler``: None for local worker processes, ``"local"`` for a Dask LocalCluster, or a
    Dask scheduler address. ``force`` regrades unchanged, already graded submissions.
    ``evaluate_only`` runs no notebook: each submission is scored again, with the current
    rubric, from the model its stored execution saved (none stored: failed, with why).
    ``by_cost`` hands out the labs expected to run longest first
    (:mod:`autograder.batch.ordering`); False keeps the order found (for comparison).
    ``warm_up`` runs here while the workers warm up: what the caller needs after the batch
    (the command line's table imports pandas then, not on one core after the last grade).
    """
    start = time.monotonic()
    course_root = course_root.resolve()
    if not (course_root / "gradebook.db").exists() and not (course_root / "source").is_dir():
        raise ConfigError(f"{course_root} is not a course directory (no source/, no gradebook)")
    # What batches killed mid-run left behind; once more at the end, for the processes of
    # a killed batch that were still dying when this one started. Their slots are cleaned
    # before any is taken, each once.
    remove_stale_temps()
    clean_free_slots()
    try:
        with one_batch(course_root), warnings.catch_warnings():
            # nbgrader's gradebook code trips SQLAlchemy's autoflush warnings on every
            # submission (harmless, and not the instructor's to act on): kept off the terminal.
            from sqlalchemy.exc import SAWarning

            warnings.filterwarnings("ignore", category=SAWarning, module=r"nbgrader\.")
            return _grade(
                course_root,
                labs,
                students,
                workers,
                scheduler,
                force,
                progress,
                start,
                evaluate_only,
                by_cost,
                warm_up,
            )
    finally:
        remove_stale_temps()


def _grade(
    course_root: Path,
    labs: list[str] | None,
    students: list[str] | None,
    workers: int | None,
    scheduler: str | None,
    force: bool,
    progress: bool,
    start: float,
    evaluate_only: bool = False,
    by_cost: bool = True,
    warm_up: Callable[[], object] | None = None,
) -> BatchSummary:
    labs = labs or sorted(p.name for p in (course_root / "source").iterdir() if p.is_dir())
    submissions = find_submissions(course_root, labs, students or [])
    outcomes: list[SubmissionOutcome] = []
    todo = []
    for s in submissions:
        if not force and already_graded(course_root, s):
            outcomes.append(SubmissionOutcome(s.lab, s.student, "skipped"))
        else:
            todo.append(s)
    if by_cost and not evaluate_only:  # re-scoring runs no notebook: every one is short
        todo = longest_first(todo, lambda s: s.lab)
    cores = os.cpu_count() or 1
    workers = max(1, min(workers or cores, len(todo) or 1))
    threads = max(1, cores // workers)
    warm = (str(course_root), tuple(sorted({s.lab for s in todo})), threads, not evaluate_only)
    engine = "local" if scheduler is None else "dask"
    with contextlib.ExitStack() as stack:
        if todo and scheduler is None and not evaluate_only:
            stack.callback(reap_started_ahead)  # once the workers have ended
            _start_servers_ahead(workers, threads)
        # The grader's own imports, while those servers import TensorFlow.
        from tqdm import tqdm

        from autograder.batch.replay import cache_dir, one_engine, replay_api, warm_replay
        from autograder.batch.worker import execute_submission
        from autograder.course import Course
        from autograder.grading.preprocessors import read_result

        course = Course.open(course_root)
        api = replay_api(course, cache_dir(course_root))
        api.config.ReplayExecute.execute_missing = not evaluate_only
        bar = tqdm(
            total=len(submissions),
            initial=len(outcomes),
            unit="nb",
            desc="grading",
            disable=not progress,
            dynamic_ncols=True,
        )
        stack.callback(bar.close)
        stack.enter_context(_frozen_heap())
        if not todo:  # nothing to grade: no worker started, nothing warmed up
            pool: Executor | None = None
        else:
            pool, engine, workers = stack.enter_context(
                _executor(workers, scheduler, warm, len(todo))
            )
        futures: dict[Future[dict[str, Any]], Submission] = {
            pool.submit(  # type: ignore[union-attr]
                execute_submission,
                str(course_root),
                s.lab,
                s.student,
                s.execution_digest,
                threads,
                evaluate_only,
            ): s
            for s in todo
        }
        hand_over_started_ahead()  # the workers are forked: each holds its own server
        if futures:
            stack.enter_context(one_engine(api.coursedir.db_url))  # after the workers' fork
            with contextlib.suppress(Exception):  # the first replay then pays for it
                warm_replay(course, sorted({s.lab for s in todo}))
            if warm_up is not None:
                with contextlib.suppress(Exception):  # the caller then pays for it
                    warm_up()
            gc.freeze()  # what the warm-ups made, too
        for future in as_completed(futures):
            s = futures[future]
            try:
                done = future.result()
            except Exception as exc:
                done = {"key": None, "worker_s": 0.0, "cells_s": 0.0}
                done["error"] = f"the worker running it failed: {type(exc).__name__}: {exc}"
            outcome = _record(course_root, api, s, done, read_result, evaluate_only)
            outcomes.append(outcome)
            bar.update(1)
            bar.set_postfix(failed=sum(o.status == "failed" for o in outcomes), refresh=False)
    summary = BatchSummary(tuple(outcomes), time.monotonic() - start, workers, engine)
    (course_root / "batch_summary.json").write_text(summary.to_json())
    return summary


# Per submission, 1 or 0: its kernel started before it came; forked from the fork server;
# its evaluator forked; a kernel started while it was evaluated, for a next submission; and
# with a worker's first, its fork server one that the coordinator started ahead.
KERNEL_FLAGS = (
    "kernel_ahead",
    "kernel_forked",
    "evaluator_forked",
    "next_kernel_ahead",
    "server_ahead",
)


def _waiting() -> None:
    from tqdm import tqdm

    tqdm.write(
        "waiting for another grading of this course (grade-on-submit or the formgrader)",
        file=sys.stderr,
    )


def _record(
    course_root: Path,
    api: Any,
    s: Submission,
    done: dict[str, Any],
    read_result: Any,
    evaluate_only: bool = False,
) -> SubmissionOutcome:
    """nbgrader's autograde for one submission (replaying its execution), and the state."""
    from sqlalchemy.exc import SQLAlchemyError

    from autograder.batch.replay import has_result, notebook_digest, one_transaction

    begin = time.monotonic()
    api.config.ReplayExecute.submission_digest = s.execution_digest  # read by its autograde
    # The worker's execution, found by the key it names, unless the notebook changed since
    # it read it (a resubmission collected mid-batch): then found by what nbgrader reads.
    try:
        same = done.get("notebook_digest") == notebook_digest(s.notebook.read_bytes())
    except OSError:
        same = False
    api.config.ReplayExecute.execution_key = (done.get("key") or "") if same else ""
    timing = {k: round(v, 3) for k, v in done.items() if k.endswith("_s") or k in KERNEL_FLAGS}
    if evaluate_only and done.get("error"):  # never executed here instead: it stays as it was
        return SubmissionOutcome(s.lab, s.student, "failed", done["error"], timing=timing)
    # A stored execution replayed writes its grades at once, whole or not at all; a notebook
    # executed here (none stored) commits as nbgrader does, never holding the gradebook's
    # write lock while it runs.
    key, replay_dir = api.config.ReplayExecute.execution_key, api.config.ReplayExecute.replay_dir
    stored = bool(key and replay_dir) and has_result(Path(replay_dir) / key, s.lab)
    commits = one_transaction(api.coursedir.db_url) if stored else contextlib.nullcontext()
    with writing_grades(course_root, waiting=_waiting):
        try:
            with commits:
                result = api.autograde(s.lab, s.student, force=True, create=True)
        except SQLAlchemyError as exc:  # begun or committed: the gradebook's lock, its disk
            result = {"success": False, "error": f"the gradebook was not written: {exc}"}
        timing["replay_s"] = round(time.monotonic() - begin, 3)
        graded = read_result(course_root / "autograded" / s.student / s.lab, s.notebook.stem)
        if not result["success"] or graded is None:
            reason = done.get("error") or _reason(result.get("log", "") + result.get("error", ""))
            return SubmissionOutcome(s.lab, s.student, "failed", reason, timing=timing)
        when = datetime.now(UTC).isoformat()
        state = {"digest": s.digest, "graded_at": when, "timing": timing}
        write_fresh(state_path(course_root, s), json.dumps(state))
    return SubmissionOutcome(
        s.lab,
        s.student,
        "graded",
        graded.error or "",
        graded.score,
        graded.max_score,
        timing,
        graded.review,
    )
