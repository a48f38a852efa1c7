"""Batch grading: same grades as serial nbgrader, on a real Dask cluster too; resumable;
re-scored from stored models after a rubric change."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from dask_cluster import tcp_cluster
from grading_helpers import (
    QUICK,
    environment,
    orphaned_fork_servers,
    sandbox_processes_left,
    writing_lock_held,
)
from nbgrader.preprocessors import ClearOutput

from autograder.authoring.examples import example_path
from autograder.batch.replay import cache_dir
from autograder.batch.scheduling import grade_batch
from autograder.cli import main
from autograder.course import Course, create_course
from autograder.errors import GradingError
from autograder.grading.preprocessors import read_result
from autograder.grading.rubric_record import read_rubric_versions
from autograder.reports.gradebook import check_table
from autograder.rubric import load_rubric, rubric_version
from autograder.settings import RUBRIC_DIR_ENV, STATE_FILE, rubric_dir

pytestmark = pytest.mark.slow
LAB = "lab3_mnist_dense"
# Examples whose scores do not hinge on the last digit of an accuracy: training is not
# bit-for-bit reproducible across runs (thread counts change float sums), serial or not.
STABLE = ["correct", "not-reshaped", "untrained"]


def _course(root: Path, names: list[str]) -> Course:
    with environment(QUICK):
        course = create_course(root, labs=[LAB])
    for i, name in enumerate(names):
        course.submit(f"s{i}-{name}", LAB, example_path(LAB, name))
    return course


def _gradebook(course: Course) -> pd.DataFrame:
    """Per student: every graded cell's score, the total and the max, as the gradebook has
    them (what the formgrader and ``nbgrader export`` show)."""
    return check_table(course.db_url, [LAB])


def _integrity(course: Course) -> str:
    with sqlite3.connect(course.root / "gradebook.db") as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


@pytest.fixture(scope="module")
def cluster_graded(tmp_path_factory, staged_data):
    """The same class graded by serial ``nbgrader autograde`` and by ``autograder grade``
    against a real Dask cluster: a scheduler and two workers started as processes of their
    own, over TCP on loopback, sharing the course folder."""
    from dask.distributed import Client

    def descendants() -> list[str]:  # run in each worker (a closure: shipped by value)
        import psutil

        return [" ".join(p.cmdline())[-100:] for p in psutil.Process().children(recursive=True)]

    root = tmp_path_factory.mktemp("cluster")
    serial = _course(root / "serial", STABLE)
    batch = _course(root / "batch", STABLE)
    nbgrader = Path(sys.executable).parent / "nbgrader"
    proc = subprocess.run(
        [str(nbgrader), "autograde", LAB], cwd=serial.root, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with tcp_cluster(2, QUICK, root / "dask.log") as address:
        summary = grade_batch(batch.root, scheduler=address, progress=False)
        # The workers live on; what they started for the batch (the kernels they started
        # ahead) does not: killed, and gone within seconds.
        left = sandbox_processes_left(20, evaluator=False)
        # Nor their evaluators, which hold the held-out data as this batch read them, nor
        # their fork servers: no process of the batch is left under a worker, or orphaned.
        with Client(address) as client:
            kept = client.run(descendants)
        orphans = orphaned_fork_servers()
    assert not left, left
    assert kept and not any(kept.values()), kept
    assert not orphans, orphans
    return serial, batch, summary


def test_a_dask_cluster_gives_the_grades_of_serial_nbgrader(cluster_graded):
    serial, batch, summary = cluster_graded
    assert summary.engine == "dask" and summary.workers == 2
    assert summary.count("graded") == len(STABLE), summary.format()
    expected = _gradebook(serial)
    assert len(expected) == len(STABLE) and (expected["status"] == "graded").all()
    pd.testing.assert_frame_equal(_gradebook(batch), expected)
    totals = dict(zip(expected["student"], expected["total"], strict=True))
    assert {o.student: o.score for o in summary.outcomes} == totals
    assert totals[f"s0-{STABLE[0]}"] == 10.0 and min(totals.values()) < 10.0
    # Every notebook ran in a kernel started before it came: a worker's warm-up started its
    # first, and each submission the next one's while the evaluator scored it.
    assert [o.timing["kernel_ahead"] for o in summary.outcomes] == [1.0] * len(STABLE)
    # The autograded notebooks carry the grader's outputs, not the student's.
    nb = batch.root / "autograded" / f"s2-{STABLE[2]}" / LAB / f"{LAB}.ipynb"
    assert "AutograderCheckFailed" in nb.read_text() or "[pass]" in nb.read_text()
    # The workers executed them (the coordinator stores nothing): each execution is kept,
    # with the model it saved.
    stored = list(cache_dir(batch.root).glob("*/artifacts/model.keras"))
    assert len(stored) == len(STABLE)
    assert not _left_by_dead_graders()


def test_a_threshold_change_rescores_stored_models_without_running_them(
    cluster_graded, tmp_path, monkeypatch
):
    """``--evaluate-only`` after the accuracy thresholds changed: no notebook runs, the
    checks that do not measure the model keep their points, the accuracy check takes the
    new thresholds, and the gradebook names the rubric that scored each submission."""
    _, graded, _ = cluster_graded
    course = Course.open(shutil.copytree(graded.root, tmp_path / "course", symlinks=True))
    before = _gradebook(course).set_index("student")
    old_version = rubric_version(LAB)
    rubrics = tmp_path / "rubrics"
    shutil.copytree(rubric_dir(), rubrics)
    text = (rubrics / f"{LAB}.toml").read_text()
    # Full marks only beyond the best stored model's accuracy (training is not seeded: the
    # best varies from run to run), none a little under it; review beyond that.
    results = [read_result(course.root / "autograded" / s / LAB, LAB) for s in before.index]
    best = max(r.metrics.get("accuracy") or 0.0 for r in results if r is not None)
    full, zero = round(best + 0.005, 4), round(best - 0.05, 4)
    strict = text.replace("full = 0.85\nzero = 0.50", f"full = {full}\nzero = {zero}")
    strict = strict.replace("review_beyond = 0.94", f"review_beyond = {max(0.94, full)}", 1)
    assert strict != text and f"full = {full}" in strict
    (rubrics / f"{LAB}.toml").write_text(strict)
    monkeypatch.setenv(RUBRIC_DIR_ENV, str(rubrics))
    new_version = rubric_version(LAB)
    assert new_version != old_version

    summary = grade_batch(course.root, workers=2, evaluate_only=True, progress=False)
    assert summary.count("graded") == len(STABLE), summary.format()
    assert all("execute_s" not in o.timing for o in summary.outcomes)  # nothing ran
    after = _gradebook(course).set_index("student")
    kept = [c for c in before.columns if c not in ("check_accuracy", "total")]
    pd.testing.assert_frame_equal(after[kept], before[kept])
    # Each accuracy score is what the new thresholds give the stored model's accuracy.
    check = load_rubric(LAB).check("check_accuracy")
    for student in after.index:
        result = read_result(course.root / "autograded" / student / LAB, LAB)
        assert result is not None and result.rubric == new_version
        accuracy = result.metrics.get("accuracy")
        fraction = check.threshold(result.data_source).fraction(accuracy) if accuracy else 0.0
        expected = round(check.points * min(1.0, max(0.0, fraction)), 2)
        assert after.loc[student, "check_accuracy"] == expected, (student, accuracy)
    assert (after["check_accuracy"] != before["check_accuracy"]).any()
    versions = read_rubric_versions(course.db_url)
    assert set(versions.values()) == {new_version}
    export = tmp_path / "exports"
    assert main(["export", str(course.root), "--format", "csv", "--out", str(export)]) == 0
    grades = pd.read_csv(export / "grades.csv")
    assert set(grades[f"{LAB}/rubric"]) == {new_version}

    # A submission with no stored execution is failed, with why, never run.
    course.submit("late-comer", LAB, example_path(LAB, "correct"))
    summary = grade_batch(course.root, workers=1, evaluate_only=True, progress=False)
    (failed,) = [o for o in summary.outcomes if o.status == "failed"]
    assert failed.student == "late-comer" and "without --evaluate-only" in failed.reason


def _waited_on(lock: Path) -> bool:
    """Whether some process is blocked waiting for ``lock``'s flock (``/proc/locks``)."""
    ino = f":{lock.stat().st_ino} "
    return any("->" in ln and ino in ln for ln in Path("/proc/locks").read_text().splitlines())


def test_a_batch_and_grade_on_submit_write_a_courses_grades_in_turn(
    cluster_graded, tmp_path, capfd
):
    """While grade-on-submit writes a grade (it holds the course's writing lock, as
    tests/test_submit_queue.py::test_grade_on_submit_collects_nothing_while_another_grading_writes_the_course
    shows), the batch records nothing: it says so, waits, and records everything after."""
    _, graded, _ = cluster_graded
    course = Course.open(shutil.copytree(graded.root, tmp_path / "course", symlinks=True))
    # The holder goes first on the way out: a failed assertion leaves no batch waiting.
    with ThreadPoolExecutor(1) as pool, writing_lock_held(course.root) as holder:
        batch = pool.submit(
            grade_batch, course.root, force=True, evaluate_only=True, progress=False
        )
        deadline = time.monotonic() + 120
        while not _waited_on(course.root / ".autograder" / "writing.lock"):
            assert not batch.done(), batch.result()
            assert time.monotonic() < deadline, "the batch never came to record a grade"
            time.sleep(0.2)
        released = holder.release()
        summary = batch.result(timeout=300)
    assert summary.count("graded") == len(STABLE), summary.format()
    for name in STABLE:
        (state,) = (course.root / "autograded").glob(f"*-{name}/{LAB}/{STATE_FILE}")
        graded_at = datetime.fromisoformat(json.loads(state.read_text())["graded_at"])
        assert graded_at.timestamp() >= released, name
    assert "waiting for another grading of this course" in capfd.readouterr().err


def _left_by_dead_graders() -> list[Path]:
    import tempfile

    import psutil

    from autograder.sandbox.files import grader_work_dir

    return [
        p
        for base in {grader_work_dir(), tempfile.gettempdir()}
        for p in Path(base).glob("autograder-[0-9]*-*")
        if not psutil.pid_exists(int(p.name.split("-")[1]))
    ]


def _fork_servers_here() -> set[int]:
    """This process's child fork servers (an earlier test's own may be among them), and
    any child it has not reaped."""
    import psutil

    found = set()
    for p in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.status() == psutil.STATUS_ZOMBIE or "forkserver.py" in " ".join(p.cmdline()):
                found.add(p.pid)
    return found


def test_killed_batch_resumes_with_what_is_left(tmp_path, staged_data):
    names = ["correct", "untrained", "not-reshaped"]
    course = _course(tmp_path / "course", names)
    cmd = [sys.executable, "-m", "autograder", "grade", str(course.root), "--workers", "2"]
    env = {**os.environ, **QUICK}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    states = course.root / "autograded"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(states.glob(f"*/{LAB}/{STATE_FILE}")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and its workers, mid-batch
    proc.wait()
    finished = {p.parts[-3] for p in states.glob(f"*/{LAB}/{STATE_FILE}")}
    assert 1 <= len(finished) < len(names)
    assert _integrity(course) == "ok"

    frozen: list[int] = []  # while the caller's warm-up ran: objects left out of collections
    servers_before = _fork_servers_here()
    summary = grade_batch(
        course.root,
        workers=2,
        progress=False,
        warm_up=lambda: frozen.append(gc.get_freeze_count()),
    )
    # The warm-up ran once, beside the workers', with the coordinator's imports held out of
    # its garbage collections; afterwards they are the collector's again.
    assert len(frozen) == 1 and frozen[0] > 10_000
    assert gc.get_freeze_count() == 0
    from autograder.sandbox.forked import forking_wanted

    # Each worker's fork server was one this process started ahead, before its own imports,
    # and none of them is left (nor a zombie) once the batch is done.
    firsts = [o for o in summary.outcomes if "startup_s" in o.timing]
    assert firsts and all(o.timing["server_ahead"] == float(forking_wanted()) for o in firsts)
    assert _fork_servers_here() <= servers_before
    # What the killed batch's processes left (copies, captures) is gone with the next run.
    assert not _left_by_dead_graders()
    skipped = {o.student for o in summary.outcomes if o.status == "skipped"}
    graded = {o.student for o in summary.outcomes if o.status == "graded"}
    assert skipped == finished
    assert graded == {f"s{i}-{n}" for i, n in enumerate(names)} - finished
    assert summary.count("failed") == 0
    assert _integrity(course) == "ok"
    scores = {o.student: o.score for o in summary.outcomes if o.status == "graded"}
    assert all(score is not None for score in scores.values())
    # The last submission started starts no kernel ahead: none can come after it.
    ahead = [o.timing["next_kernel_ahead"] for o in summary.outcomes if o.status == "graded"]
    assert 0.0 in ahead

    # Unchanged: nothing to do. One submission changed: only that one is graded again.
    again = grade_batch(course.root, workers=2, progress=False, warm_up=lambda: frozen.append(0))
    assert again.count("skipped") == len(names)
    assert len(frozen) == 1  # no worker started: nothing to warm up beside
    course.submit("s1-untrained", LAB, example_path(LAB, "correct"))
    again = grade_batch(course.root, workers=2, progress=False)
    assert {o.student for o in again.outcomes if o.status == "graded"} == {"s1-untrained"}
    (alone,) = [o for o in again.outcomes if o.status == "graded"]
    assert alone.timing["next_kernel_ahead"] == 0.0  # graded alone: no next one to start
    rescored = next(o.score for o in again.outcomes if o.student == "s1-untrained")
    assert rescored is not None and rescored > 9  # was untrained (6 of 10), now trained

    # --force grades everything again; stored executions are replayed, not run again.
    forced = grade_batch(course.root, workers=2, force=True, progress=False)
    assert forced.count("graded") == len(names)
    assert not any("execute_s" in o.timing for o in forced.outcomes)
    summary_file = json.loads((course.root / "batch_summary.json").read_text())
    assert len(summary_file["outcomes"]) == len(names)


def test_with_nothing_stored_the_coordinator_sanitizes_then_executes(tmp_path, staged_data):
    """The replay skips nbgrader's sanitizing pass (the worker sanitized what it stored);
    where nothing is stored the coordinator executes the notebook itself, sanitized first:
    test cells a student edited run as the course wrote them, and score as a batch's."""
    from autograder.batch.replay import replay_api
    from autograder.batch.submissions import find_submissions

    course = _course(tmp_path / "course", ["edited-test-cells"])
    shutil.copytree(course.root, tmp_path / "batch")
    (s,) = find_submissions(course.root, [LAB], [])
    api = replay_api(course, cache_dir(course.root))
    assert api.config.Autograde.sanitize_preprocessors == [ClearOutput]
    api.config.ReplayExecute.submission_digest = s.execution_digest
    api.config.ReplayExecute.execution_key = "0" * 64  # named by a worker, never stored
    with environment(QUICK):
        assert api.autograde(LAB, s.student, force=True, create=True)["success"]
    here = read_result(course.root / "autograded" / s.student / LAB, LAB)
    autograded = (course.root / "autograded" / s.student / LAB / f"{LAB}.ipynb").read_text()
    assert "[pass] Held-out accuracy: 4/4" not in autograded  # the student's print, gone
    summary = grade_batch(tmp_path / "batch", workers=1, progress=False)
    (outcome,) = summary.outcomes
    assert here is not None and here.score == outcome.score < 10, (here.score, outcome)


def test_a_notebook_changed_after_its_worker_read_it_is_not_replayed(tmp_path, staged_data):
    """The coordinator replays a worker's execution only while the submitted notebook holds
    the bytes that worker read: one collected again in between (a resubmission, mid-batch)
    is looked for by what nbgrader reads, and executed there when nothing matches (here a
    run that executes nothing: it fails, never scored from the notebook before)."""
    from autograder.batch.replay import notebook_digest, replay_api
    from autograder.batch.scheduling import _record
    from autograder.batch.submissions import find_submissions

    course = _course(tmp_path / "course", ["correct"])
    (graded,) = grade_batch(course.root, workers=1, progress=False).outcomes
    assert graded.score == 10.0
    (s,) = find_submissions(course.root, [LAB], [])
    (key,) = [p.name for p in cache_dir(course.root).iterdir() if len(p.name) == 64]
    done = {"key": key, "notebook_digest": notebook_digest(s.notebook.read_bytes())}
    api = replay_api(course, cache_dir(course.root))
    api.config.ReplayExecute.execute_missing = False
    assert _record(course.root, api, s, done, read_result).score == 10.0  # replayed
    shutil.copy(example_path(LAB, "wrong-architecture"), s.notebook)
    again = _record(course.root, api, s, done, read_result)
    assert again.status == "failed", again
    assert again.reason.startswith("autograder.errors.GradingError: no stored result"), again


def test_a_replay_commits_once_and_a_killed_one_writes_nothing(tmp_path, staged_data):
    """The coordinator's replay of a stored execution (nbgrader's autograde, which commits
    a grade cell at a time) reaches the gradebook in one commit; a coordinator killed in the
    middle of one, after nbgrader's steps that write grades, leaves nothing of it there."""
    import sqlalchemy
    from nbgrader.api import Gradebook, MissingEntry

    from autograder.batch.replay import notebook_digest, replay_api
    from autograder.batch.scheduling import _record
    from autograder.batch.submissions import find_submissions
    from autograder.grading.sanitize import NeutraliseStudentContent

    course = _course(tmp_path / "course", ["untrained"])  # quick: never trains
    (graded,) = grade_batch(course.root, workers=1, progress=False).outcomes
    (s,) = find_submissions(course.root, [LAB], [])
    (key,) = [p.name for p in cache_dir(course.root).iterdir() if len(p.name) == 64]
    done = {"key": key, "notebook_digest": notebook_digest(s.notebook.read_bytes())}
    api = replay_api(course, cache_dir(course.root))
    api.config.ReplayExecute.execute_missing = False
    commits: list[object] = []

    def count(connection: object) -> None:
        commits.append(connection)

    sqlalchemy.event.listen(sqlalchemy.Engine, "commit", count)
    try:
        replayed = _record(course.root, api, s, done, read_result)
        assert len(commits) == 1, len(commits)
        # Nothing stored under the key: executed here (here: refused), committing as
        # nbgrader does, so no write lock is held while a notebook runs.
        commits.clear()
        unstored = _record(course.root, api, s, {**done, "key": "0" * 64}, read_result)
        assert unstored.reason.startswith("autograder.errors.GradingError: no stored result")
        assert len(commits) > 1, len(commits)
    finally:
        sqlalchemy.event.remove(sqlalchemy.Engine, "commit", count)
    assert replayed.status == "graded" and replayed.score == graded.score, replayed

    with Gradebook(course.db_url) as gb:
        gb.remove_submission(LAB, s.student)
    pid = os.fork()
    if pid == 0:  # killed after SaveAutoGrades, RecordRubric and the late steps wrote
        NeutraliseStudentContent.preprocess = lambda *args: os._exit(7)  # type: ignore
        try:
            _record(course.root, api, s, done, read_result)
        finally:
            os._exit(1)
    assert os.WEXITSTATUS(os.waitpid(pid, 0)[1]) == 7
    with Gradebook(course.db_url) as gb, pytest.raises(MissingEntry):
        gb.find_submission(LAB, s.student)
    assert _integrity(course) == "ok"
    again = _record(course.root, api, s, done, read_result)  # the lock is free again
    assert again.status == "graded" and again.score == graded.score, again


def test_a_local_dask_cluster_grades_and_leaves_nothing_running(tmp_path, staged_data):
    """`--scheduler local`: the batch starts a Dask LocalCluster of its own, whose workers
    warm up and grade as local processes do, and stops it; nothing of theirs stays."""
    from autograder.sandbox.forked import forking_wanted

    course = _course(tmp_path / "course", ["untrained", "untrained"])  # quick: never trains
    temp = Path(tempfile.gettempdir())
    before = set(temp.iterdir())
    summary = grade_batch(course.root, scheduler="local", workers=2, progress=False)
    assert set(temp.iterdir()) <= before  # nor anything in /tmp (Dask's scratch folder)
    assert (summary.engine, summary.workers) == ("dask", 2)
    assert summary.count("graded") == 2, summary.format()
    for outcome in summary.outcomes:
        assert outcome.timing["kernel_forked"] == float(forking_wanted())
        assert outcome.timing["evaluator_forked"] == float(forking_wanted())
    table = _gradebook(course)
    assert len(table) == 2 and table["total"].nunique() == 1 and table["total"].iloc[0] > 0
    assert _integrity(course) == "ok"
    # The cluster's workers are gone; their kernels, soon.
    left = sandbox_processes_left(20, evaluator=False)
    assert not left, left


def test_a_workers_sanitizing_reads_its_own_copy_of_the_gradebook(tmp_path, staged_data):
    """A worker's sanitizing reads the lab's notebooks and source cells (written when the
    lab was generated) from a copy of a SQLite gradebook, taken once per batch: its reads
    never wait on the coordinator's writes. The copy holds the same cells and goes when
    the worker is released; a database that is not a file is read as it is."""
    from types import SimpleNamespace

    from nbgrader.api import Gradebook

    from autograder.batch import worker

    # A course folder whose name a file URI must quote ("#", "%").
    course = Course.open(_course(tmp_path / "course #1 100%", ["untrained"]).root)
    notebook = load_rubric(LAB).notebook
    try:
        url = worker._resources(course, LAB, notebook, "s0-untrained")["nbgrader"]["db_url"]
        assert url != course.db_url and worker._gradebook_read(course) == url  # one copy
        cells = []
        for db in (url, course.db_url):
            with Gradebook(db, course.course_id) as gb:
                found = gb.find_notebook(notebook, LAB)
                cells.append([(c.name, c.source) for c in found.source_cells])
        assert cells[0] == cells[1] and cells[0]
        copy = Path(url.removeprefix("sqlite:///"))
        assert copy.is_file() and copy.parent.stat().st_mode & 0o077 == 0  # the grader's only
    finally:
        worker.release_worker()
    assert not copy.parent.exists()
    other = SimpleNamespace(db_url="postgresql://grader@db.example/gradebook")
    assert worker._gradebook_read(other) == other.db_url  # type: ignore[arg-type]


def test_the_batch_grades_into_the_gradebook_the_course_config_names(tmp_path, staged_data):
    """`autograder grade` takes the course id and gradebook from the course's own
    nbgrader_config.py (read as data), as the formgrader does: one gradebook, not two."""
    from nbgrader.api import Gradebook

    course = _course(tmp_path / "course", ["untrained"])  # quick: never trains
    shared = tmp_path / "shared" / "gradebook.db"
    shared.parent.mkdir()
    with (course.root / "nbgrader_config.py").open("a") as f:
        f.write("c.CourseDirectory.course_id = 'dl-fall'\n")
        f.write(f"c.CourseDirectory.db_url = 'sqlite:///{shared}'\n")
    configured = Course.open(course.root)
    assert configured.course_id == "dl-fall"
    configured.generate_assignment(LAB)  # the lab, in the configured gradebook
    summary = grade_batch(course.root, workers=1, progress=False)
    assert summary.count("graded") == 1, summary.format()
    with Gradebook(configured.db_url) as gb:
        assert gb.find_submission(LAB, "s0-untrained").score > 0
    with Gradebook(course.db_url) as gb:  # the course folder's own: untouched
        assert not gb.students


# An unreadable submission is failed with its reason, the rest graded, and it is not marked
# done: test_adversarial.py::test_the_batch_grades_everything_but_the_unreadable_notebook
# (the same assertions, on the batch that grades the whole corpus).


def test_a_second_grader_on_the_same_course_is_refused(tmp_path, staged_data):
    course = _course(tmp_path / "course", ["correct"])
    hold = (
        "import sys, time; from pathlib import Path\n"
        "from autograder.course_lock import one_batch\n"
        "with one_batch(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(course.root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(GradingError, match=f"pid {holder.pid}"):
            grade_batch(course.root, workers=1, progress=False)
        result = subprocess.run(
            [sys.executable, "-m", "autograder", "grade", str(course.root)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == GradingError.exit_code
        assert "another `autograder grade`" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    assert not (course.root / "autograded").exists()  # nothing graded while refused


def test_a_clusters_workers_get_threads_for_their_own_machine():
    from autograder.batch.scheduling import threads_per_worker

    workers = {
        "tcp://10.0.0.1:1": {"host": "10.0.0.1"},
        "tcp://10.0.0.1:2": {"host": "10.0.0.1"},
        "tcp://10.0.0.2:1": {"host": "10.0.0.2"},
        "tcp://10.0.0.3:1": {"host": "10.0.0.3"},
    }
    cores = {"tcp://10.0.0.1:1": 8, "tcp://10.0.0.1:2": 8, "tcp://10.0.0.2:1": 2}
    assert threads_per_worker(workers, cores) == {
        "tcp://10.0.0.1:1": 4,  # two workers share an 8-core machine
        "tcp://10.0.0.1:2": 4,
        "tcp://10.0.0.2:1": 2,  # alone on 2 cores, whatever the coordinator has
        "tcp://10.0.0.3:1": 1,  # did not report: one thread
    }


def test_a_worker_starts_the_next_kernel_after_an_execution_that_failed(tmp_path, monkeypatch):
    """A worker starts the next notebook's kernel once its evaluator has a capture, and
    also after an execution that failed before that: the submission after a failure does
    not wait for a kernel to start."""
    from types import SimpleNamespace

    from autograder.batch import worker
    from autograder.batch.submissions import find_submissions
    from autograder.grading.execute import GraderExecute

    course = _course(tmp_path / "course", ["untrained"])
    (submission,) = find_submissions(course.root, [LAB], [])
    started: list[GraderExecute] = []

    def fail(self: GraderExecute, nb: object, resources: object) -> None:
        raise RuntimeError("the grader's own error")

    monkeypatch.setattr(GraderExecute, "preprocess", fail)
    monkeypatch.setattr(GraderExecute, "start_kernel_ahead", lambda self: started.append(self))
    monkeypatch.setattr(worker, "_evaluator", lambda labs: SimpleNamespace(warm=lambda: None))
    try:
        with pytest.raises(RuntimeError, match="the grader's own error"):
            worker.execute_submission(
                str(course.root), LAB, submission.student, submission.execution_digest, 1
            )
    finally:
        worker.release_worker()
    assert len(started) == 1 and isinstance(started[0], GraderExecute)


def test_the_warm_ups_of_workers_and_coordinator_write_nothing(tmp_path):
    """What a worker (a lab's source notebook sanitized) and the coordinator (the
    gradebook's labs read, a replay's writes made in a transaction rolled back) do once,
    before the first submission, to keep first-time costs out of it: nothing of the
    course changed, the gradebook included, though the coordinator's warm-up did write."""
    import hashlib

    from nbgrader.api import Gradebook

    from autograder.batch import worker
    from autograder.batch.replay import warm_replay

    course = _course(tmp_path / "course", ["correct"])
    assert (course.root / "source" / LAB / f"{load_rubric(LAB).notebook}.ipynb").is_file()

    def snapshot() -> dict[str, str]:
        return {
            str(p.relative_to(course.root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(course.root.rglob("*"))
            if p.is_file()
        }

    before = snapshot()
    try:
        worker._warm_sanitizing(course, (LAB,), worker._worker_config(course))
    finally:
        worker.release_worker()  # its copy of the gradebook, taken here, goes
    made = []
    real = Gradebook.update_or_create_submission

    def spy(self, assignment, student, **kwargs):
        made.append(student)
        return real(self, assignment, student, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Gradebook, "update_or_create_submission", spy)
        warm_replay(course, [LAB])
    assert len(made) == 1
    assert snapshot() == before
    with Gradebook(course.db_url) as gb:
        assert made[0] not in {s.id for s in gb.students}


def test_the_cells_overwrite_reading_them_once_does_what_nbgraders_does(tmp_path):
    """Sanitizing puts back what a student may not change (locked cells' sources, points,
    cell types, checksums) from the gradebook: ours reads the notebook's cells in one go
    rather than one query per cell, with nbgrader's outcome, a cell unknown to the
    gradebook included."""
    import copy

    from nbformat import reads
    from nbgrader.api import Gradebook
    from nbgrader.preprocessors import OverwriteCells

    from autograder.batch.replay import one_engine
    from autograder.grading.preprocessors import OverwriteCellsReadOnce, sanitize_preprocessors

    assert OverwriteCellsReadOnce in sanitize_preprocessors()
    assert OverwriteCells not in sanitize_preprocessors()  # only our subclass of it
    course = _course(tmp_path / "course", ["edited-test-cells"])
    notebook = load_rubric(LAB).notebook
    submitted = course.root / "submitted" / "s0-edited-test-cells" / LAB / f"{notebook}.ipynb"
    nb = reads(submitted.read_text(), as_version=4)
    graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    graded[0].metadata.nbgrader["points"] = 100  # more than it is worth
    graded[1].cell_type = "markdown"
    nb.cells[-1].metadata["nbgrader"] = {**graded[0].metadata.nbgrader, "grade_id": "unknown"}
    resources = {"nbgrader": {"notebook": notebook, "assignment": LAB, "db_url": course.db_url}}
    theirs, _ = OverwriteCells().preprocess(copy.deepcopy(nb), copy.deepcopy(resources))
    queries: list[str] = []
    with one_engine(course.db_url):
        with Gradebook(course.db_url) as gb:  # the engine made, the course row looked up
            import sqlalchemy

            sqlalchemy.event.listen(
                gb.engine, "before_cursor_execute", lambda *a: queries.append(a[2])
            )
        ours, _ = OverwriteCellsReadOnce().preprocess(copy.deepcopy(nb), copy.deepcopy(resources))
    assert ours == theirs
    assert ours != nb  # there was something to put back
    assert "unknown" not in json.dumps([c.metadata for c in ours.cells])
    assert 0 < len(queries) <= 6, queries  # nbgrader's own: one or two a cell, some 20


def test_the_coordinators_gradebooks_share_one_engine_and_hold_no_lock(tmp_path):
    """nbgrader opens about ten gradebooks per autograde; in the coordinator (and in each
    worker, for its copy) they share one engine (its compiled queries), and a closed
    gradebook still leaves the database free: another process takes its write lock at
    once. Only the first gradebook of a sharing looks for (or makes) nbgrader's tables.
    A forked child, another database, and the time after, get nbgrader's engine per
    gradebook, whatever order two sharings end in."""
    import contextlib

    import nbgrader.api
    import sqlalchemy
    from nbgrader.api import Gradebook

    from autograder.batch.replay import one_engine, replay_api

    course = _course(tmp_path / "course", [])
    url = replay_api(course, cache_dir(course.root)).coursedir.db_url  # what autograde opens
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    first_sharing, second_sharing = contextlib.ExitStack(), contextlib.ExitStack()
    first_sharing.enter_context(one_engine(url))
    with Gradebook(url) as first:
        engine = first.engine
        assert [a.name for a in first.assignments] == [LAB]
    with sqlite3.connect(course.root / "gradebook.db", timeout=0) as other:
        other.execute("BEGIN EXCLUSIVE")  # raises "database is locked" if a lock is held
        other.rollback()
    statements: list[str] = []
    sqlalchemy.event.listen(
        engine, "before_cursor_execute", lambda *args: statements.append(args[2])
    )
    with Gradebook(url) as second:
        assert second.engine is engine
        assert second.find_assignment(LAB).name == LAB
    assert statements and not [s for s in statements if "sqlite_master" in s or "PRAGMA" in s]
    assert not [s for s in statements if "FROM course" in s]  # its row found by the first
    pid = os.fork()
    if pid == 0:  # a forked child: an engine of its own
        with Gradebook(url) as child:
            os._exit(0 if child.engine is not engine else 1)
    assert os.waitpid(pid, 0)[1] == 0
    second_sharing.enter_context(one_engine(other_url))
    with Gradebook(other_url) as elsewhere, Gradebook(other_url) as again:
        assert elsewhere.engine is not engine and again.engine is elsewhere.engine
        again.add_assignment("made")  # the first one made its tables
        assert [a.name for a in elsewhere.assignments] == ["made"]
    first_sharing.close()  # the first sharing ends first: the second one still holds
    with Gradebook(url) as after, Gradebook(other_url) as still:
        assert after.engine is not engine and still.engine is elsewhere.engine
    second_sharing.close()
    assert nbgrader.api.create_engine is sqlalchemy.create_engine
    assert nbgrader.api.inspect is sqlalchemy.inspect
    assert "create_all" not in vars(nbgrader.api.Base.metadata)
    assert nbgrader.api.Gradebook.check_course.__module__ == "nbgrader.api"


def test_a_course_row_made_in_a_rolled_back_transaction_is_made_again(tmp_path):
    """The gradebooks of one engine look their course's row up once, once it is committed:
    one made inside a replay's transaction that rolled back is gone, and made again."""
    from nbgrader.api import Gradebook

    from autograder._runtime import ensure_tool_path
    from autograder.batch.replay import one_engine, one_transaction

    ensure_tool_path()  # nbgrader's alembic, which stamps a new gradebook
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    with Gradebook(url, "another"):  # the tables, and a course other than this one
        pass
    with one_engine(url):
        with pytest.raises(RuntimeError), one_transaction(url):
            with Gradebook(url, "course101"):
                pass
            raise RuntimeError("the replay failed")
        with Gradebook(url, "course101") as gb:
            gb.add_assignment("made")  # refers to the course's row: there again
    with sqlite3.connect(tmp_path / "fresh.db") as db:
        assert db.execute("SELECT id FROM course ORDER BY id").fetchall() == [
            ("another",),
            ("course101",),
        ]


def test_a_batch_hands_out_the_labs_expected_to_run_longest_first():
    from autograder.batch.ordering import longest_first

    found = [("boston", "a"), ("boston", "b"), ("imdb", "a"), ("new", "a"), ("imdb", "b")]
    cost = {"boston": 50.0, "imdb": 300.0, "new": None}.get
    ordered = longest_first(found, lambda s: s[0], cost)
    # Never measured first (it may be the longest), then by cost; a lab keeps its order.
    assert ordered == [("new", "a"), ("imdb", "a"), ("imdb", "b"), ("boston", "a"), ("boston", "b")]


def test_a_labs_expected_time_is_its_calibration_runs_on_the_data_staged_here(
    monkeypatch, staged_data
):
    from autograder.batch.ordering import expected_seconds

    monkeypatch.setenv("AUTOGRADER_TRAIN_LIMIT", "imdb=4000")
    imdb, boston = expected_seconds("lab5_imdb_rnn"), expected_seconds("lab3_boston_regression")
    dense = expected_seconds("lab3_mnist_dense")
    assert imdb is not None and boston is not None and dense is not None
    assert imdb > boston > dense  # minutes of LSTM training; seconds of a small dense net
    # A cap no calibration ran under: not known, not guessed.
    monkeypatch.setenv("AUTOGRADER_TRAIN_LIMIT", "imdb=123")
    assert expected_seconds("lab5_imdb_rnn") is None


def test_deleted_cells_are_restored_and_a_whole_notebook_reads_the_gradebook_once(
    tmp_path, monkeypatch
):
    """Graded cells a student deleted are put back (nbgrader's ``OverwriteCells``); a
    notebook that has them all is left as it is, and which cells the lab has is read once
    per gradebook file as it is: read again after it changes."""
    import nbgrader.api
    from nbformat import reads

    from autograder.grading import restore
    from autograder.grading.execute import GraderExecute

    course = _course(tmp_path / "course", [])
    notebook = load_rubric(LAB).notebook
    source = course.root / "release" / LAB / f"{notebook}.ipynb"
    resources = {"nbgrader": {"db_url": course.db_url, "assignment": LAB, "notebook": notebook}}
    opened: list[str] = []
    real = nbgrader.api.Gradebook.__init__

    def counted(self, *args, **kwargs):
        opened.append(args[0])
        real(self, *args, **kwargs)

    monkeypatch.setattr(nbgrader.api.Gradebook, "__init__", counted)
    parent = GraderExecute()
    whole = reads(source.read_text(), as_version=4)
    for _ in range(3):
        kept = restore.restore_deleted_cells(
            reads(source.read_text(), as_version=4), {**resources}, parent
        )
        assert kept == whole
    assert len(opened) == 1
    graded = [i for i, c in enumerate(whole.cells) if c.metadata.get("nbgrader", {}).get("grade")]
    gutted = reads(source.read_text(), as_version=4)
    gone = gutted.cells.pop(graded[-1]).metadata.nbgrader.grade_id
    state: dict = {**resources}
    back = restore.restore_deleted_cells(gutted, state, parent)
    assert state["autograder"]["restored_cells"] == [gone]
    assert [c.metadata.get("nbgrader", {}).get("grade_id") for c in back.cells] == [
        c.metadata.get("nbgrader", {}).get("grade_id") for c in whole.cells
    ]
    with nbgrader.api.Gradebook(course.db_url) as gb:  # the file changes
        gb.add_student("someone-new")
    opened.clear()
    restore.restore_deleted_cells(reads(source.read_text(), as_version=4), {**resources}, parent)
    assert len(opened) == 1
    # one entry for the lab's notebook, not one per state of the file
    assert [k for k in restore._EXPECTED if k[0].startswith(str(tmp_path))] == [
        (str(course.root / "gradebook.db"), LAB, notebook)
    ]
