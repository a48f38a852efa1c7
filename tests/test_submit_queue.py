"""The grade-on-submit queue: fair between students, resubmissions joined, statuses kept
across a restart; the lab dates it acts on; and its turns with the batch at writing grades."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from grading_helpers import writing_lock_held

from autograder.errors import ConfigError
from autograder.hub.on_submit import parse_entry
from autograder.hub.submit_queue import FairQueue
from autograder.schedule import is_open, load_schedule

LAB = "lab3_mnist_dense"


def _drain(queue: FairQueue) -> list[str]:
    order = []
    while (job := queue.next(timeout=0)) is not None:
        order.append(job[0])
        queue.finished(*job, state="graded", score=1.0, max_score=1.0)
    return order


def test_ten_resubmissions_wait_as_one_and_do_not_delay_a_first(tmp_path):
    queue = FairQueue(tmp_path / "queue.json")
    queue.submitted("busy", LAB, "busy+lab+0+a", grade=True)
    job = queue.next(timeout=0)
    assert job == ("busy", LAB)
    # While the first grading runs: nine resubmissions, then another student's first.
    for i in range(1, 10):
        queue.submitted("busy", LAB, f"busy+lab+{i}+a", grade=True)
    queue.submitted("other", LAB, "other+lab+0+a", grade=True)
    queue.finished("busy", LAB, state="graded", score=0.0, max_score=10.0)
    # The resubmissions wait as one pair, behind the student not graded yet.
    assert queue.status("busy")[0].state == "queued"
    assert queue.status("busy")[0].submissions == 10
    assert _drain(queue) == ["other", "busy"]
    assert [s for s, _, _ in queue.started] == ["busy", "other", "busy"]


def test_statuses_survive_a_restart_and_a_running_grading_runs_again(tmp_path):
    path = tmp_path / "queue.json"
    queue = FairQueue(path)
    queue.submitted("a", LAB, "a+lab+0+x", grade=True)
    queue.submitted("b", LAB, "b+lab+0+x", grade=False, reason="exam")
    queue.ignore("zz+other+0+x")
    assert queue.next(timeout=0) == ("a", LAB)  # then the service stops
    again = FairQueue(path)
    assert {s.student: s.state for s in again.status()} == {"a": "queued", "b": "off"}
    assert again.status("b")[0].reason == "exam"
    assert again.unseen({"a+lab+0+x", "zz+other+0+x", "c+lab+0+x"}) == {"c+lab+0+x"}
    assert _drain(again) == ["a"]


def test_inbound_names():
    assert parse_entry("alice+lab3_mnist_dense+2026-12-01 09:00:00.000000 UTC+ab12") == (
        "alice",
        LAB,
    )
    for bad in ("alice", "alice+lab", "+lab+t+r", "a+b+c+d+e"):
        assert parse_entry(bad) is None


def test_a_lab_opens_on_its_date_and_grading_on_submit_is_a_switch(tmp_path):
    now = datetime.now(UTC)
    (tmp_path / "schedule.toml").write_text(
        f"[{LAB}]\nopens = {(now + timedelta(hours=1)).isoformat()}\ngrade_on_submit = false\n"
    )
    schedule = load_schedule(tmp_path)
    assert not is_open(schedule, LAB)
    assert is_open(schedule, LAB, now + timedelta(hours=2))
    assert is_open(schedule, "lab4_mnist_cnn")  # no date: open
    assert schedule[LAB].grade_on_submit is False
    (tmp_path / "schedule.toml").write_text(f'[{LAB}]\ngrade_on_submit = "no"\n')
    with pytest.raises(ConfigError, match="grade_on_submit must be true or false"):
        load_schedule(tmp_path)


def test_grade_on_submit_collects_nothing_while_another_grading_writes_the_course(
    tmp_path, monkeypatch
):
    """``grade_one`` holds the course's writing lock (``autograder.course_lock``) from collect
    to released feedback; a batch recording grades holds it too
    (tests/test_batch.py::test_a_batch_and_grade_on_submit_write_a_courses_grades_in_turn)."""
    import nbgrader.apps

    from autograder.hub import on_submit

    collected: list[float] = []

    class _API:  # nbgrader's API as far as grade_one goes when collect fails
        def __init__(self, config: object) -> None:
            self.coursedir = type("Dir", (), {"student_id": "", "db_url": ""})()

        def collect(self, lab: str) -> dict[str, object]:
            collected.append(time.time())
            return {"success": False, "error": "stopped here by the test"}

    monkeypatch.setattr(nbgrader.apps, "NbGraderAPI", _API)
    monkeypatch.setattr(on_submit, "_config", lambda course_dir: None)
    course = tmp_path / "course"
    with writing_lock_held(course, 2.0) as holder:
        result = on_submit.grade_one(course, "alice", LAB)
        released = holder.release()
    assert result == {"state": "failed", "reason": "collect: stopped here by the test"}
    assert collected and collected[0] >= released


def test_the_grader_account_waits_on_a_lock_file_a_root_batch_made():
    """The lock needs no write access to its file: the grader account (``nobody`` here)
    locks the file a root batch created in its own folder, and waits for the batch."""
    if os.geteuid() != 0:
        pytest.fail("a root batch and the grader account: run the tests as root (make test)")
    from autograder.course_lock import one_batch

    base = Path(tempfile.mkdtemp(prefix="autograder-lock-", dir="/tmp"))
    try:
        base.chmod(0o755)
        course = base / "course"
        with one_batch(course):  # as root: .autograder and its lock files are root's
            pass
        assert (course / ".autograder").stat().st_uid == 0
        wait = (
            "import sys, time\nfrom pathlib import Path\n"
            "from autograder.course_lock import writing_grades\n"
            "with writing_grades(Path(sys.argv[1])):\n    print(time.time())"
        )
        with writing_lock_held(course, 2.0) as holder:
            out = subprocess.run(
                [sys.executable, "-c", wait, str(course)],
                user="nobody",
                group=pwd.getpwnam("nobody").pw_gid,
                extra_groups=[],
                capture_output=True,
                text=True,
                timeout=60,
            )
            released = holder.release()
        assert out.returncode == 0, out.stderr[-2000:]
        assert float(out.stdout) >= released
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_formgraders_grading_buttons_wait_their_turn(tmp_path, monkeypatch):
    """In the formgrader's server (the extension ``autograder.hub.server``, on its command
    line), nbgrader's collect, autograde and feedback steps hold the course's writing lock:
    a TA's autograde waits while the batch or grade-on-submit writes, and they wait for it."""
    import nbgrader.apps.api as nbgrader_api

    from autograder.hub import server
    from autograder.hub.config import _FORMGRADER_ARGS

    assert "--ServerApp.jpserver_extensions=autograder.hub.server=True" in _FORMGRADER_ARGS
    assert {"module": "autograder.hub.server"} in server._jupyter_server_extension_points()
    ran: list[tuple[str, float]] = []
    for name in server.WRITING_STEPS:  # nbgrader's steps, as far as the lock goes

        def step(api: object, *args: object, _name: str = name) -> dict[str, bool]:
            ran.append((_name, time.time()))
            return {"success": True}

        monkeypatch.setattr(nbgrader_api.NbGraderAPI, name, step)
    server._load_jupyter_server_extension(None)
    server._load_jupyter_server_extension(None)  # loaded twice: wrapped once
    course = tmp_path / "course"
    api = type("API", (), {"coursedir": type("Dir", (), {"root": str(course)})()})()
    with writing_lock_held(course, 2.0) as holder:
        for name in server.WRITING_STEPS:
            assert getattr(nbgrader_api.NbGraderAPI, name)(api, LAB) == {"success": True}
        released = holder.release()
    assert [n for n, _ in ran] == list(server.WRITING_STEPS)
    assert ran[0][1] >= released


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_the_grade_on_submit_service_stops_at_once_when_the_hub_stops_it(signame):
    """The hub stops its services with SIGINT, then SIGTERM. The service (as the grader
    account, ``nobody`` here) stops within seconds of either, idle as it is between
    submissions: a handler that only scheduled the stop waited for the next request,
    and the hub's stop for its 60 s grace."""
    import socket

    from hub_helpers import free_ports

    if os.geteuid() != 0:
        pytest.fail("the service refuses root: run the tests as root (make test)")
    base = Path(tempfile.mkdtemp(prefix="autograder-submit-", dir="/tmp"))
    base.chmod(0o777)
    (port,) = free_ports(1)
    cmd = [sys.executable, "-m", "autograder.hub.on_submit", "serve", "--course-dir"]
    cmd += [str(base / "course"), "--exchange", str(base / "exchange"), "--course-id", "c"]
    proc = subprocess.Popen(
        [*cmd, "--state", str(base / "state")],
        user="nobody",
        group=pwd.getpwnam("nobody").pw_gid,
        extra_groups=[],
        cwd=base,
        env={**os.environ, "HOME": str(base), "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # up once it listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, proc.communicate()[0][-2000:]
            assert time.monotonic() < deadline, "the service never listened"
            time.sleep(0.2)
        time.sleep(5)  # idle: its first scans done, nothing to wake its loop
        began = time.monotonic()
        proc.send_signal(getattr(signal, signame))
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - began
        assert proc.returncode == 0, out[-2000:]
        assert took < 10, f"{signame}: stopped after {took:.1f} s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)
