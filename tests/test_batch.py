"""Batch grading: same grades as serial nbgrader, resumable, on a Dask LocalCluster too."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from grading_helpers import QUICK, environment

from autograder.authoring.examples import example_path
from autograder.batch.scheduling import grade_batch
from autograder.course import Course, create_course
from autograder.errors import GradingError
from autograder.grading.preprocessors import STATE_FILE
from autograder.reports.gradebook import check_table

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


def test_dask_batch_gives_the_grades_of_serial_nbgrader(tmp_path, staged_data):
    serial = _course(tmp_path / "serial", STABLE)
    batch = _course(tmp_path / "batch", STABLE)
    nbgrader = Path(sys.executable).parent / "nbgrader"
    proc = subprocess.run(
        [str(nbgrader), "autograde", LAB], cwd=serial.root, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = grade_batch(batch.root, scheduler="local", workers=2, progress=False)
    assert summary.engine == "dask" and summary.workers == 2
    assert summary.count("graded") == len(STABLE), summary.format()
    expected = _gradebook(serial)
    assert len(expected) == len(STABLE) and (expected["status"] == "graded").all()
    pd.testing.assert_frame_equal(_gradebook(batch), expected)
    totals = dict(zip(expected["student"], expected["total"], strict=True))
    assert {o.student: o.score for o in summary.outcomes} == totals
    assert totals[f"s0-{STABLE[0]}"] == 10.0 and min(totals.values()) < 10.0
    # The autograded notebooks carry the grader's outputs, not the student's.
    nb = batch.root / "autograded" / f"s2-{STABLE[2]}" / LAB / f"{LAB}.ipynb"
    assert "AutograderCheckFailed" in nb.read_text() or "[pass]" in nb.read_text()


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

    summary = grade_batch(course.root, workers=2, progress=False)
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

    # Unchanged: nothing to do. One submission changed: only that one is graded again.
    again = grade_batch(course.root, workers=2, progress=False)
    assert again.count("skipped") == len(names)
    course.submit("s1-untrained", LAB, example_path(LAB, "correct"))
    again = grade_batch(course.root, workers=2, progress=False)
    assert {o.student for o in again.outcomes if o.status == "graded"} == {"s1-untrained"}
    rescored = next(o.score for o in again.outcomes if o.student == "s1-untrained")
    assert rescored is not None and rescored > 9  # was untrained (6 of 10), now trained

    # --force grades everything again; stored executions are replayed, not run again.
    forced = grade_batch(course.root, workers=2, force=True, progress=False)
    assert forced.count("graded") == len(names)
    assert not any("execute_s" in o.timing for o in forced.outcomes)
    summary_file = json.loads((course.root / "batch_summary.json").read_text())
    assert len(summary_file["outcomes"]) == len(names)


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
        "from autograder.batch.scheduling import _exclusive\n"
        "with _exclusive(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)"
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
