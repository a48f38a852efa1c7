"""Grade a whole class at once: submissions run in parallel workers, the gradebook is
written by one process.

Each worker sanitizes a submission with nbgrader's own sanitizing preprocessors, executes it
(``GraderExecute``, under the sandbox's limits) and evaluates the saved model in its warm
evaluator. What it produced is stored under ``<course>/.autograder/executed/<key>``, where the
key covers the sanitized notebook and everything the grade depends on (rubric, source
notebook, data). The coordinator then runs nbgrader's real ``autograde`` for that
submission with :class:`ReplayExecute` in place of ``GraderExecute``: it finds the stored
execution and replays it, so the gradebook, the autograded notebook and the feedback are
exactly what a serial ``nbgrader autograde`` writes, from a single writer.

Workers are local processes or the workers of a Dask cluster (``dask.distributed``). A
finished submission leaves ``.autograder-batch.json`` in its autograded folder; a later run
skips it while the submission and the grader's inputs are unchanged, so a killed batch
resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from nbformat import NotebookNode, from_dict, reads
from traitlets import Unicode

from autograder.errors import ConfigError, GradingError
from autograder.fstree import copy_files, remove_tree, write_fresh
from autograder.grading.execute import STATE_FILE, GraderExecute, autograde_preprocessors
from autograder.results import GradingResult
from autograder.rubric import load_rubric
from autograder.sandbox.kernel import grader_temp, remove_stale_temps
from autograder.settings import PACKAGE_DIR, execution_settings

__all__ = [
    "STATE_FILE",
    "BatchSummary",
    "ReplayExecute",
    "Submission",
    "SubmissionOutcome",
    "execute_submission",
    "find_submissions",
    "grade_batch",
    "warm_worker",
]

Status = Literal["graded", "failed", "skipped"]


@dataclass(frozen=True)
class Submission:
    lab: str
    student: str
    notebook: Path  # submitted/<student>/<lab>/<notebook>.ipynb
    digest: str  # of every submitted file of this lab, and the grader's inputs


@dataclass(frozen=True)
class SubmissionOutcome:
    lab: str
    student: str
    status: Status
    reason: str = ""
    score: float | None = None
    max_score: float | None = None
    # Seconds: worker_s (in the worker: sanitize_s + execute_s + evaluate_s and the rest),
    # cells_s (the notebook's own cells, as its kernel reported them), replay_s (in the
    # coordinator: nbgrader's autograde replaying the execution); with a worker's first
    # submission, startup_s (its warm-up, before any submission); kernel_ahead: 1 when the
    # notebook ran in a kernel started before it came (0: started for it).
    timing: dict[str, float] = field(default_factory=dict)
    review: tuple[str, ...] = ()  # why it is flagged for review (autograder.grading.review)

    @property
    def overhead_s(self) -> float:
        """Grader time beyond the notebook's own cells."""
        t = self.timing
        return t.get("worker_s", 0.0) - t.get("cells_s", 0.0) + t.get("replay_s", 0.0)


@dataclass(frozen=True)
class BatchSummary:
    outcomes: tuple[SubmissionOutcome, ...]
    wall_s: float
    workers: int
    engine: str
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def count(self, status: Status) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)

    def format(self) -> str:
        flagged = [o for o in self.outcomes if o.review]
        lines = [
            f"{self.count('graded')} graded ({len(flagged)} flagged for review), "
            f"{self.count('failed')} failed, "
            f"{self.count('skipped')} skipped (unchanged) in {self.wall_s:.1f} s "
            f"with {self.workers} {self.engine} worker(s)"
        ]
        lines += [
            f"  FAILED {o.lab} {o.student}: {o.reason}"
            for o in self.outcomes
            if o.status == "failed"
        ]
        lines += [f"  REVIEW {o.lab} {o.student}: {'; '.join(o.review)}" for o in flagged]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- inputs


def _hash_files(h: Any, root: Path, paths: list[Path]) -> None:
    for path in sorted(paths):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())


def grader_fingerprint(course_root: Path, lab: str) -> str:
    """What a grade depends on besides the submission: rubric, source notebook, data."""
    from autograder.data.loaders import data_dir, data_source
    from autograder.rubric import rubric_file

    rubric = load_rubric(lab)
    h = hashlib.sha256()
    _hash_files(h, PACKAGE_DIR, [*sorted(PACKAGE_DIR.rglob("*.py")), rubric_file(lab)])
    source = course_root / "source" / lab
    _hash_files(h, source, [p for p in source.rglob("*") if p.is_file()])
    h.update(data_source(rubric.dataset).encode())
    for folder in ("public", "heldout"):
        manifest = data_dir() / folder / "manifest.json"
        if manifest.is_file():
            h.update(manifest.read_bytes())
    h.update(json.dumps(execution_settings(), sort_keys=True).encode())
    return h.hexdigest()


def find_submissions(course_root: Path, labs: list[str], students: list[str]) -> list[Submission]:
    """Every submitted notebook of ``labs`` (all students unless some are named)."""
    submitted = course_root / "submitted"
    found = []
    for lab in labs:
        notebook = load_rubric(lab).notebook + ".ipynb"
        fingerprint = grader_fingerprint(course_root, lab)
        names = students or sorted(p.parent.name for p in submitted.glob(f"*/{lab}") if p.is_dir())
        for student in names:
            folder = submitted / student / lab
            if not folder.is_dir():
                continue
            h = hashlib.sha256(fingerprint.encode())
            _hash_files(h, folder, [p for p in folder.rglob("*") if p.is_file()])
            found.append(Submission(lab, student, folder / notebook, h.hexdigest()))
    return found


def _state_path(course_root: Path, s: Submission) -> Path:
    return course_root / "autograded" / s.student / s.lab / STATE_FILE


def _already_graded(course_root: Path, s: Submission) -> bool:
    path = _state_path(course_root, s)
    try:
        return bool(json.loads(path.read_text()).get("digest") == s.digest)
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------- executions


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


def _cache_dir(course_root: Path) -> Path:
    return course_root / ".autograder" / "executed"


def _store(entry: Path, nb: NotebookNode, resources: dict[str, Any], result: GradingResult) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    (tmp / "cells.json").write_text(json.dumps(nb.cells))
    (tmp / "result.json").write_text(result.to_json())
    extra = {"capture_outputs": resources.get("autograder", {}).get("capture_outputs", [])}
    (tmp / "meta.json").write_text(json.dumps(extra))
    try:
        tmp.rename(entry)  # atomic: a killed worker leaves no half entry
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another worker stored the same execution


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


def _sanitize(nb: NotebookNode, resources: dict[str, Any], config: Any) -> NotebookNode:
    from nbgrader.converters import Autograde

    for step in Autograde(config=config).sanitize_preprocessors:
        nb, resources = step(config=config).preprocess(nb, resources)
    return nb


def _threads_env(threads: int) -> dict[str, str]:
    # Sized by the coordinator so that workers x threads matches the cores.
    return {
        "TF_NUM_INTRAOP_THREADS": str(threads),
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": str(threads),
    }


_STARTUP: dict[str, float] = {}  # this worker's start-up seconds, reported with its first


def _worker_config(course_root: Path, course_id: str) -> Any:
    """The course's nbgrader config as a worker grades with it: one notebook after another,
    so the next kernel starts while a submission is evaluated and recorded."""
    from autograder.course import Course

    config = Course(course_root, course_id).config()
    config.GraderExecute.spare_kernel = True
    return config


def warm_worker(course_root: str, course_id: str, labs: tuple[str, ...], threads: int) -> float:
    """In a worker, before its first submission: the evaluator's TensorFlow and data, the
    grader's imports, the sandbox's set-up and the first kernel, done once and waited
    for, so that no submission carries them. Returns the seconds it took."""
    start = time.monotonic()
    os.environ.update(_threads_env(threads))
    try:
        evaluator = _evaluator(labs)
        evaluator.warm()  # TensorFlow imports in its own process meanwhile
        from nbgrader.converters import Autograde  # noqa: F401

        GraderExecute(config=_worker_config(Path(course_root), course_id)).start_kernel_ahead()
        evaluator.wait_ready()
    except Exception as exc:  # the submissions then pay for what is missing, nothing worse
        import logging

        logging.getLogger(__name__).warning("warming the worker up failed: %s", exc)
    _STARTUP["s"] = time.monotonic() - start
    return _STARTUP["s"]


def execute_submission(
    course_root: str, course_id: str, lab: str, student: str, digest: str, threads: int
) -> dict[str, Any]:
    """In a worker: sanitize, execute and evaluate one submission; store the execution.

    Returns a plain dict (it crosses process and cluster boundaries):
    ``{"key", "worker_s", "cells_s", "error"}``.
    """
    from autograder.course import Course

    start = time.monotonic()
    os.environ.update(_threads_env(threads))
    # Started by warm_worker; else its imports and data loading overlap this execution.
    _evaluator((lab,)).warm()
    root = Path(course_root)
    course = Course(root, course_id)
    rubric = load_rubric(lab)
    source = root / "submitted" / student / lab / f"{rubric.notebook}.ipynb"
    out: dict[str, Any] = {"key": None, "worker_s": 0.0, "cells_s": 0.0, "error": None}
    if "s" in _STARTUP:  # reported once per worker, with its first submission
        out["startup_s"] = _STARTUP.pop("s")
    try:
        nb = reads(source.read_text(), as_version=4)
    except Exception as exc:
        out["error"] = f"the notebook could not be read: {type(exc).__name__}: {exc}"[:300]
        return out
    config = _worker_config(root, course_id)
    resources: dict[str, Any] = {
        "nbgrader": {
            "student": student,
            "assignment": lab,
            "notebook": rubric.notebook,
            "db_url": course.db_url,
            "course_id": course_id,
        }
    }
    try:
        nb = _sanitize(nb, resources, config)
    except Exception as exc:
        out["error"] = f"sanitizing failed: {type(exc).__name__}: {exc}"[:300]
        return out
    out["sanitize_s"] = time.monotonic() - start
    key = execution_key(nb, digest)
    cache = _cache_dir(root)
    cache.mkdir(parents=True, exist_ok=True)
    out["key"] = key
    if (cache / key).is_dir():
        out["worker_s"] = time.monotonic() - start
        return out
    work = grader_temp(lab)
    try:
        # The student's other submitted files sit next to the notebook, as in nbgrader:
        # regular files only (no folders or links a student could shape against the grader).
        copy_files(source.parent, work)
        resources["metadata"] = {"path": str(work)}
        execute = GraderExecute(config=config)
        begin = time.monotonic()
        nb, resources = execute.preprocess(nb, resources)
        out["execute_s"] = time.monotonic() - begin
        out["cells_s"] = _cell_seconds(nb.cells)
        out["capture_s"] = _seconds(resources["autograder"].get("capture_timing", {}))
        out["kernel_ahead"] = float(bool(resources["autograder"].get("kernel_started_ahead")))
        artifacts = Path(resources["autograder"]["artifacts"])
        begin = time.monotonic()
        try:
            result = _evaluator((lab,)).evaluate(lab, artifacts, timeout=600)
        finally:
            remove_tree(artifacts)
        out["evaluate_s"] = time.monotonic() - begin
    finally:
        remove_tree(work)
    _store(cache / key, nb, resources, result)
    out["worker_s"] = time.monotonic() - start
    return out


class ReplayExecute(GraderExecute):
    """``GraderExecute`` that replays an execution stored by a batch worker when one
    matches the notebook, and executes as usual when none does."""

    replay_dir = Unicode("", help="Folder of stored executions").tag(config=True)
    submission_digest = Unicode("", help="Submission.digest of the one being graded").tag(
        config=True
    )

    def preprocess(self, nb: NotebookNode, resources: Any) -> tuple[NotebookNode, Any]:
        entry = Path(self.replay_dir) / execution_key(nb, self.submission_digest)
        if not self.replay_dir or not (entry / "result.json").is_file():
            self.log.warning("no stored execution for this notebook: executing it here")
            return super().preprocess(nb, resources)
        nb.cells = [from_dict(c) for c in json.loads((entry / "cells.json").read_text())]
        meta = json.loads((entry / "meta.json").read_text())
        resources.setdefault("autograder", {}).update(
            result=GradingResult.from_json((entry / "result.json").read_text()),
            capture_outputs=meta["capture_outputs"],
        )
        return nb, resources


# ----------------------------------------------------------------------------- coordinator


@contextlib.contextmanager
def _executor(
    workers: int, scheduler: str | None, warm: tuple[Any, ...]
) -> Iterator[tuple[Executor, str, int]]:
    """Worker processes, each warmed up (``warm_worker(*warm)``) before its first task."""
    if scheduler is None:
        with ProcessPoolExecutor(
            max_workers=workers, initializer=warm_worker, initargs=warm
        ) as pool:
            yield pool, "local", workers
        return
    from dask.distributed import Client, LocalCluster

    if scheduler == "local":
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        )
        with cluster, Client(cluster) as client:
            _warm_dask(client, warm)
            yield client.get_executor(pure=False), "dask", workers
        return
    with Client(scheduler) as client:
        n = len(client.scheduler_info().get("workers", {})) or workers
        _warm_dask(client, warm)
        yield client.get_executor(pure=False), "dask", n


def _warm_dask(client: Any, warm: tuple[Any, ...]) -> None:
    """``warm_worker`` once on each worker of the cluster (a worker that joins later warms
    up with its first submission)."""
    addresses = list(client.scheduler_info().get("workers", {}))
    futures = [
        client.submit(warm_worker, *warm, workers=[a], allow_other_workers=False, pure=False)
        for a in addresses
    ]
    client.gather(futures)


def _replay_api(course: Any, cache: Path) -> Any:
    from nbgrader.apps import NbGraderAPI

    from autograder._runtime import ensure_tool_path

    config = course.config()
    config.Autograde.autograde_preprocessors = [
        ReplayExecute if step is GraderExecute else step for step in autograde_preprocessors()
    ]
    config.ReplayExecute.replay_dir = str(cache)
    ensure_tool_path()
    return NbGraderAPI(config=config)


def _reason(log: str) -> str:
    lines = [ln for ln in log.strip().splitlines() if "ERROR" in ln or "Error" in ln]
    return (lines[-1] if lines else (log.strip().splitlines() or ["no log"])[-1])[:300]


def grade_batch(
    course_root: Path,
    *,
    labs: list[str] | None = None,
    students: list[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> BatchSummary:
    """Autograde every submission of ``labs`` in parallel; see the module's docstring.

    ``scheduler``: None for local worker processes, ``"local"`` for a Dask LocalCluster, or a
    Dask scheduler address. ``force`` regrades unchanged, already graded submissions.
    """
    start = time.monotonic()
    course_root = course_root.resolve()
    if not (course_root / "gradebook.db").exists() and not (course_root / "source").is_dir():
        raise ConfigError(f"{course_root} is not a course directory (no source/, no gradebook)")
    # What batches killed mid-run left behind; once more at the end, for the processes of
    # a killed batch that were still dying when this one started.
    remove_stale_temps()
    try:
        with _exclusive(course_root), warnings.catch_warnings():
            # nbgrader's gradebook code trips SQLAlchemy's autoflush warnings on every
            # submission (harmless, and not the instructor's to act on): kept off the terminal.
            from sqlalchemy.exc import SAWarning

            warnings.filterwarnings("ignore", category=SAWarning, module=r"nbgrader\.")
            return _grade(course_root, labs, students, workers, scheduler, force, progress, start)
    finally:
        remove_stale_temps()


@contextlib.contextmanager
def _exclusive(course_root: Path) -> Iterator[None]:
    """One batch per course at a time: a second one is refused, naming the first."""
    import fcntl

    path = course_root / ".autograder" / "grade.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as lock:
        # A batch that was just killed holds the lock until its last worker is gone (tens
        # of milliseconds): wait a moment before calling it a second grader.
        deadline = time.monotonic() + 5
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                lock.seek(0)
                holder = lock.read().strip() or "unknown"
                raise GradingError(
                    f"another `autograder grade` (pid {holder}) is grading {course_root}: "
                    "wait for it to finish or stop it"
                ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield  # the kernel drops the lock when this process ends, however it ends


def _grade(
    course_root: Path,
    labs: list[str] | None,
    students: list[str] | None,
    workers: int | None,
    scheduler: str | None,
    force: bool,
    progress: bool,
    start: float,
) -> BatchSummary:
    from tqdm import tqdm

    from autograder.course import Course
    from autograder.grading.execute import read_result

    course = Course(course_root)
    labs = labs or sorted(p.name for p in (course_root / "source").iterdir() if p.is_dir())
    submissions = find_submissions(course_root, labs, students or [])
    outcomes: list[SubmissionOutcome] = []
    todo = []
    for s in submissions:
        if not force and _already_graded(course_root, s):
            outcomes.append(SubmissionOutcome(s.lab, s.student, "skipped"))
        else:
            todo.append(s)
    cores = os.cpu_count() or 1
    workers = max(1, min(workers or cores, len(todo) or 1))
    threads = max(1, cores // workers)
    cache = _cache_dir(course_root)
    api = _replay_api(course, cache)
    bar = tqdm(
        total=len(submissions),
        initial=len(outcomes),
        unit="nb",
        desc="grading",
        disable=not progress,
        dynamic_ncols=True,
    )
    warm = (str(course_root), course.course_id, tuple(sorted({s.lab for s in todo})), threads)
    engine = "local" if scheduler is None else "dask"
    with contextlib.ExitStack() as stack:
        if not todo:  # nothing to grade: no worker started, nothing warmed up
            pool: Executor | None = None
        else:
            pool, engine, workers = stack.enter_context(_executor(workers, scheduler, warm))
        futures: dict[Future[dict[str, Any]], Submission] = {
            pool.submit(  # type: ignore[union-attr]
                execute_submission,
                str(course_root),
                course.course_id,
                s.lab,
                s.student,
                s.digest,
                threads,
            ): s
            for s in todo
        }
        for future in as_completed(futures):
            s = futures[future]
            try:
                done = future.result()
            except Exception as exc:
                done = {"key": None, "worker_s": 0.0, "cells_s": 0.0}
                done["error"] = f"the worker running it failed: {type(exc).__name__}: {exc}"
            outcome = _record(course_root, api, s, done, read_result)
            outcomes.append(outcome)
            bar.update(1)
            bar.set_postfix(failed=sum(o.status == "failed" for o in outcomes), refresh=False)
    bar.close()
    summary = BatchSummary(tuple(outcomes), time.monotonic() - start, workers, engine)
    (course_root / "batch_summary.json").write_text(summary.to_json())
    return summary


def _record(
    course_root: Path, api: Any, s: Submission, done: dict[str, Any], read_result: Any
) -> SubmissionOutcome:
    """nbgrader's autograde for one submission (replaying its execution), and the state."""
    begin = time.monotonic()
    api.config.ReplayExecute.submission_digest = s.digest  # read by this autograde's app
    result = api.autograde(s.lab, s.student, force=True, create=True)
    replay_s = time.monotonic() - begin
    timing = {k: round(v, 3) for k, v in done.items() if k.endswith("_s") or k == "kernel_ahead"}
    timing["replay_s"] = round(replay_s, 3)
    graded = read_result(course_root / "autograded" / s.student / s.lab, s.notebook.stem)
    if not result["success"] or graded is None:
        reason = done.get("error") or _reason(result.get("log", "") + result.get("error", ""))
        return SubmissionOutcome(s.lab, s.student, "failed", reason, timing=timing)
    state = {"digest": s.digest, "graded_at": datetime.now(UTC).isoformat(), "timing": timing}
    write_fresh(_state_path(course_root, s), json.dumps(state))
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
