"""A semester on the real hub, on loopback, as the README's "Running a semester" runs it:
a course made from a roster CSV, a lab that opens on its date, students who fetch and
submit (one late, one with an extension, one resubmitting ten times), feedback that
arrives with no staff action, and exports with the roster's names, e-mails and LMS ids."""

from __future__ import annotations

import csv
import json
import pwd
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grading_helpers as gh
import nbformat
import pytest
from hub_helpers import (
    Client,
    free_ports,
    hub_root,
    listening,
    live_processes,
    processes_of,
    submit_as_os_user,
)

from autograder.authoring.examples import example_path
from autograder.hub.launch import start_hub, stop_hub, wait_until_up
from autograder.hub.settings import load_settings

pytestmark = pytest.mark.slow
LAB = "lab3_mnist_dense"
COURSE = "day2-dl"
STUDENTS = [f"sem{i:02d}" for i in range(1, 11)]
LATE, EXTENDED, RESUBMITTER, AFTER_RESUBMITTER = "sem07", "sem08", "sem09", "sem10"
CANVAS_ID = "4242"
# Seconds the whole class has to be graded: a liveness bound, not a timing assertion.
LIVENESS_S = 1500


def _autograder(*args: str) -> str:
    """The ``autograder`` command, as an instructor types it; its output."""
    exe = Path(sys.executable).parent / "autograder"
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _roster_csv(path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "first_name", "last_name", "email", "lms_user_id"])
        for i, student in enumerate(STUDENTS, start=1):
            w.writerow([student, f"First{i}", f"Last{i}", f"{student}@uni.example", f"70{i:02d}"])


def _schedule(course_dir: Path, *, opens: datetime, due: datetime) -> None:
    (course_dir / "schedule.toml").write_text(
        f"[{LAB}]\nopens = {opens.isoformat(timespec='seconds')}\n"
        f"due = {due.isoformat(timespec='seconds')}\ncanvas_id = {CANVAS_ID}\n"
    )


def _wait(what: str, until, timeout: float = LIVENESS_S, every: float = 2.0):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        found = until()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


@pytest.fixture(scope="module")
def semester(tmp_path_factory, staged_data):
    root = hub_root()
    where = tmp_path_factory.mktemp("semester")
    settings_file = where / "course.toml"
    port, hub_port, api_port, service_port, submit_port = ports = free_ports(5)
    settings_file.write_text(f"""
course_id = "{COURSE}"
labs = ["{LAB}"]
[hub]
port = {port}
hub_port = {hub_port}
proxy_api_port = {api_port}
service_port = {service_port}
submit_port = {submit_port}
root = "{root / "state"}"
[roster]
instructors = ["prof"]
tas = ["ta1"]
[auth]
class = "shared-password"
config = {{ user_password = "day2-dl-demo" }}
[spawner]
class = "localprocess"
""")
    _roster_csv(where / "roster.csv")
    # 1. The course, from the class list.
    out = _autograder("course", "init", str(settings_file), "--roster", str(where / "roster.csv"))
    assert "10 added" in out, out
    settings = load_settings(settings_file)
    assert set(STUDENTS) <= set(settings.students)  # enrolled from the gradebook
    # 2. Its calendar: the lab opens tomorrow; a 10 % a day late policy.
    now = datetime.now(UTC)
    _schedule(settings.course_dir, opens=now + timedelta(days=1), due=now + timedelta(days=8))
    (settings.course_dir / "late_policy.toml").write_text("per_day = 10\nmax_percent = 50\n")
    proc = start_hub(settings_file, log=where / "hub.log")
    base = f"http://127.0.0.1:{port}"
    users = (*settings.users, "sem11")
    try:
        wait_until_up(base + "/hub/login", timeout=90, proc=proc, log=where / "hub.log")
        yield base, settings_file, settings
    finally:
        stop_hub(proc)
        left = processes_of(root, users)
        # The grade-on-submit service's kernels and evaluators end with it: waited for
        # here, so that a later test's count of sandbox processes starts from none.
        left += gh.sandbox_processes_left(30)
        shutil.rmtree(root, ignore_errors=True)
        for user in (*STUDENTS, "sem11", "prof", "ta1"):
            subprocess.run(["userdel", user], capture_output=True, check=False)
    print((where / "hub.log").read_text()[-3000:] if left else "")
    assert not [p for p in ports if listening(p)], "ports left open"
    assert not left, f"processes left after shutdown: {left}"


def _queue(settings) -> dict:
    path = settings.submit_state / "queue.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _status(settings, student: str) -> dict | None:
    for status in _queue(settings).get("status", []):
        if status["student"] == student and status["lab"] == LAB:
            return status
    return None


def _graded(settings, student: str, after: float = 0.0) -> dict | None:
    status = _status(settings, student)
    if status and status["state"] in ("graded", "failed") and (status["finished_at"] or 0) > after:
        return status
    return None


def _seeded(notebook: Path) -> str:
    """The notebook with Keras seeded first: the test asserts full accuracy marks, which
    are then not left to chance (as the examples' variants do)."""
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import keras\nkeras.utils.set_random_seed(0)"))
    return nbformat.writes(nb)


def _why(settings, student: str) -> str:
    """What the grader said of each check that lost points, for a failing assertion."""
    from autograder.grading.preprocessors import read_result

    result = read_result(settings.course_dir / "autograded" / student / LAB, LAB)
    if result is None:
        return f"{student}: no grading result"
    lost = [
        f"{c.id} {c.score}/{c.points}: {c.messages}" for c in result.checks if c.score < c.points
    ]
    return f"{student}: {lost}; preparation: {result.preparation}"


def test_a_semester_from_roster_to_lms(semester):
    base, settings_file, settings = semester
    outbound = settings.exchange / COURSE / "outbound" / LAB
    correct = _seeded(example_path(LAB, "correct"))

    # The web-facing grade-on-submit service runs as the grader account, not root.
    service = _wait("the grade-on-submit service", lambda: _service_uid(settings), 60, 0.5)
    assert service == pwd.getpwnam(settings.grader).pw_uid != 0

    # The lab is not released before it opens.
    time.sleep(5)  # a few rounds of the service's loop
    assert not outbound.exists()
    # 3. It opens: the instructor moves the date; the service releases it.
    now = datetime.now(UTC)
    _schedule(settings.course_dir, opens=now - timedelta(minutes=1), due=now + timedelta(days=7))
    _autograder("schedule", str(settings_file))
    _wait("the lab released when it opens", outbound.is_dir, 120, 1.0)

    # 4. A late enrolment, on the running hub: no restart.
    _autograder(
        "roster", "add", str(settings_file), "sem11", "--first-name", "Late", "--email", "l@x.y"
    )
    Client(base, "sem11")  # may log in
    assert "sem11" in _group_members(settings)

    # 5. Students fetch and submit. sem01 through its own server on the hub.
    sem01 = Client(base, "sem01")
    sem01.start_server()
    user = "/user/sem01"
    listed = sem01.get(f"{user}/assignments?course_id={COURSE}").json()["value"]
    assert [a["assignment_id"] for a in listed] == [LAB]
    form = {"course_id": COURSE, "assignment_id": LAB}
    assert sem01.post(f"{user}/assignments/fetch", data=form).json()["success"]
    r = sem01.put(
        f"{user}/api/contents/{LAB}/{LAB}.ipynb",
        json={"type": "notebook", "format": "json", "content": json.loads(correct)},
    )
    assert r.status_code == 200, r.text
    submitted_at = time.time()
    assert sem01.post(f"{user}/assignments/submit", data=form).json()["success"]
    # The others as their own OS accounts, as their servers would: the released notebook
    # as fetched (nothing done), and one student resubmitting ten times in a row.
    on_time = [s for s in STUDENTS if s not in ("sem01", LATE, EXTENDED, AFTER_RESUBMITTER)]
    procs = [
        submit_as_os_user(settings, s, s, LAB, times=10 if s == RESUBMITTER else 1) for s in on_time
    ]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-2000:]
    # A first submission after the ten: it must not wait for ten gradings.
    p = submit_as_os_user(settings, AFTER_RESUBMITTER, AFTER_RESUBMITTER, LAB)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-2000:]

    # 6. The due date passes; one student has an extension.
    now = datetime.now(UTC)
    _schedule(settings.course_dir, opens=now - timedelta(hours=1), due=now)
    _autograder("schedule", str(settings_file))
    _autograder("extend", str(settings_file), EXTENDED, LAB, "--hours", "24")
    time.sleep(2)  # strictly after the due date
    for student in (LATE, EXTENDED):
        p = submit_as_os_user(settings, student, student, LAB, answer=correct)
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-2000:]

    # 7. Feedback arrives with no staff action.
    first = _wait("sem01 graded", lambda: _graded(settings, "sem01"))
    print(f"\nsubmit to feedback, {LAB} (correct): {first['finished_at'] - submitted_at:.1f} s")
    _wait("the class graded", lambda: all(_graded(settings, s) for s in STUDENTS))
    statuses = {s: _status(settings, s) for s in STUDENTS}
    assert {s: st["state"] for s, st in statuses.items()} == dict.fromkeys(STUDENTS, "graded")
    assert statuses["sem01"]["score"] == statuses["sem01"]["max_score"] == 10.0, _why(
        settings, "sem01"
    )
    assert statuses[LATE]["late_penalty"] == pytest.approx(1.0)  # 10 % of 10, a day started
    assert statuses[EXTENDED]["late_penalty"] == 0.0
    assert statuses[EXTENDED]["score"] == 10.0, _why(settings, EXTENDED)
    assert statuses[RESUBMITTER]["submissions"] == 10
    # Fair: the resubmitter's ten made at most one grading before the next student's first.
    started = [s for s, lab, _ in _queue(settings)["started"] if lab == LAB]
    before = started[: started.index(AFTER_RESUBMITTER)]
    assert before.count(RESUBMITTER) <= 1, started
    assert started.count(RESUBMITTER) <= 2, started

    # The student sees the status and the feedback on the service's page, and nobody
    # else's; and fetches the released feedback in the assignment list as usual.
    page = f"/services/{settings.submit_service}/"
    mine = sem01.get(page + "api/status").json()
    assert [(s["student"], s["state"]) for s in mine] == [("sem01", "graded")]
    assert "graded" in sem01.get(page).text
    feedback = sem01.get(page + f"feedback/{LAB}")
    assert feedback.status_code == 200 and "held-out accuracy" in feedback.text
    assert sem01.get(page + "api/status?student=sem02").status_code == 403
    assert Client(base, "ta1").get(page + "api/status").status_code == 200
    assert sem01.post(f"{user}/assignments/fetch_feedback", data=form).json()["success"]
    assert list((settings.home("sem01") / LAB / "feedback").rglob("*.html"))

    # 8. Grades to the LMS: names, e-mails and LMS ids from the roster; the penalty.
    out_dir = settings.course_dir / "exports"
    _autograder("export", str(settings_file), "--out", str(out_dir))
    with open(out_dir / "canvas.csv") as f:
        canvas = list(csv.DictReader(f))
    column = f"{LAB} ({CANVAS_ID})"
    rows = {r["SIS Login ID"]: r for r in canvas if r["Student"] != "Points Possible"}
    assert rows["sem01"]["Student"] == "Last1, First1" and rows["sem01"]["ID"] == "7001"
    assert float(rows["sem01"][column]) == 10.0
    assert float(rows[LATE][column]) == pytest.approx(9.0)
    with open(out_dir / "moodle.csv") as f:
        moodle = {r["Username"]: r for r in csv.DictReader(f)}
    assert moodle[EXTENDED]["Email address"] == f"{EXTENDED}@uni.example"
    assert moodle[EXTENDED]["First name"] == "First8"
    with open(out_dir / "grades.csv") as f:
        grades = {r["student"]: r for r in csv.DictReader(f)}
    assert float(grades[LATE][f"{LAB}/penalty"]) == pytest.approx(1.0)
    assert float(grades[EXTENDED][f"{LAB}/penalty"]) == 0.0


def _service_uid(settings) -> int | None:
    for _, uid, cmdline, _ in live_processes():
        if "autograder.hub.on_submit serve" in cmdline and str(settings.course_dir) in cmdline:
            return uid
    return None


def _group_members(settings) -> list[str]:
    import requests

    token = settings.roster_token.read_text().strip()
    r = requests.get(
        f"{settings.hub_api}/groups/nbgrader-{COURSE}",
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return list(r.json()["users"])


def test_grading_on_submit_can_be_switched_off_for_a_lab(semester):
    """An exam: submissions are recorded, not graded, until staff grade them."""
    settings = semester[2]
    text = (settings.course_dir / "schedule.toml").read_text()
    (settings.course_dir / "schedule.toml").write_text(text + "grade_on_submit = false\n")
    before = _status(settings, "sem02")
    p = submit_as_os_user(settings, "sem02", "sem02", LAB)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-2000:]
    status = _wait(
        "the submission seen",
        lambda: (
            (_status(settings, "sem02") or {}).get("state") == "off" and _status(settings, "sem02")
        ),
        120,
        1.0,
    )
    assert "not graded on submit" in status["reason"]
    assert status["submissions"] == (before["submissions"] if before else 0) + 1
    time.sleep(6)
    assert _status(settings, "sem02")["state"] == "off"


def _off(settings, student: str) -> dict | None:
    status = _status(settings, student)
    return status if status and status["state"] == "off" else None
