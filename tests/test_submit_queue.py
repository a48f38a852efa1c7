"""The grade-on-submit queue: fair between students, resubmissions joined, statuses kept
across a restart; and the lab dates it acts on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

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
