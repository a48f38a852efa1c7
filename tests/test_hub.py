"""A real JupyterHub on loopback: the course flow and its permissions."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from fixtures.adversarial.html_injection import MARKER, inject_html
from html_safety import student_script_findings
from hub_helpers import (
    PASSWORD,
    Client,
    free_ports,
    hub_root,
    listening,
    live_processes,
    processes_of,
    submit_as_os_user,
)

from autograder.authoring.examples import example_path
from autograder.course import create_course
from autograder.hub.accounts import ensure_system_users
from autograder.hub.launch import start_hub, stop_hub, wait_until_up
from autograder.hub.settings import load_settings
from autograder.sandbox.accounts import ACCOUNT_PREFIX

pytestmark = pytest.mark.slow
LAB = "lab3_mnist_dense"


def _hub_settings(path: Path, root: Path, *, course: str, roster: str) -> list[int]:
    """A course file for a hub under ``root`` on free loopback ports; the ports."""
    port, hub_port, api_port, service_port, submit_port = ports = free_ports(5)
    path.write_text(f"""
course_id = "{course}"
labs = ["{LAB}"]
[hub]
ip = "127.0.0.1"
port = {port}
hub_port = {hub_port}
proxy_api_port = {api_port}
service_port = {service_port}
submit_port = {submit_port}
root = "{root / "state"}"
[roster]
{roster}
[auth]
class = "shared-password"
config = {{ user_password = "{PASSWORD}" }}
[spawner]
class = "localprocess"
""")
    return ports


@pytest.fixture(scope="module")
def hub(tmp_path_factory, staged_data):
    root = hub_root()
    settings = tmp_path_factory.mktemp("hub") / "course.toml"
    roster = 'instructors = ["instructor"]\ntas = ["ta"]\nstudents = ["student1", "student2"]'
    ports = _hub_settings(settings, root, course="day2-dl", roster=roster)
    loaded = load_settings(settings)
    # These tests are the staff's path (collect, autograde, feedback from the formgrader):
    # grading on submit, which would race them for the same submission, is off for the lab.
    create_course(loaded.course_dir, course_id="day2-dl", labs=[LAB])
    (loaded.course_dir / "schedule.toml").write_text(f"[{LAB}]\ngrade_on_submit = false\n")
    proc = start_hub(settings, log=settings.parent / "hub.log")
    base = f"http://127.0.0.1:{ports[0]}"
    try:
        wait_until_up(base + "/hub/login", timeout=90, proc=proc, log=settings.parent / "hub.log")
        yield base, loaded
    finally:
        stop_hub(proc)
        left = processes_of(root, loaded.users)
        shutil.rmtree(root, ignore_errors=True)
    open_ports = [p for p in ports if listening(p)]
    assert not open_ports, f"ports still open after shutdown: {open_ports}"
    assert not left, f"processes left after shutdown: {left}"


SANDBOX_PROBE = """import os, pwd
print("SANDBOX-PROBE", pwd.getpwuid(os.getuid()).pw_name,
      os.readlink("/proc/self/ns/net"), os.readlink("/proc/self/ns/pid"))
"""


def _service_processes(settings) -> dict[str, int]:
    """The formgrader's and the grading service's processes: command line -> uid."""
    grader_home = f"--ServerApp.root_dir={settings.home(settings.grader)}"
    return {
        cmdline: uid
        for _, uid, cmdline, _ in live_processes()
        if grader_home in cmdline
        or ("autograder.hub.grading_service" in cmdline and str(settings.root) in cmdline)
    }


def test_student_to_feedback(hub):
    """The whole course flow, with a submission that carries HTML and JavaScript of its own
    in markdown and in outputs: it is graded as usual, and neither the TA's formgrader page
    nor the student's feedback page holds any script, event handler or javascript: URL
    of the student's. Autograding started from the formgrader runs the kernel as a sandbox
    account in namespaces of its own, through the grading service."""
    base, settings = hub
    student = Client(base, "student1")
    student.start_server()
    user = "/user/student1"
    listed = student.get(f"{user}/assignments?course_id=day2-dl").json()
    assert [a["assignment_id"] for a in listed["value"]] == [LAB]
    r = student.post(
        f"{user}/assignments/fetch", data={"course_id": "day2-dl", "assignment_id": LAB}
    )
    assert r.json()["success"]
    # The student does the lab: the correct answers, written into the fetched notebook,
    # with the student's own HTML and a cell that reports where it runs.
    nb = inject_html(nbformat.reads(example_path(LAB, "correct").read_text(), as_version=4))
    nb.cells.append(nbformat.v4.new_code_cell(SANDBOX_PROBE))
    r = student.put(
        f"{user}/api/contents/{LAB}/{LAB}.ipynb",
        json={"type": "notebook", "format": "json", "content": nb},
    )
    assert r.status_code == 200, r.text
    r = student.post(
        f"{user}/assignments/submit", data={"course_id": "day2-dl", "assignment_id": LAB}
    )
    assert r.json()["success"], r.text

    instructor = Client(base, "instructor")
    api = f"/services/{settings.course_id}/formgrader/api"
    assert instructor.get(f"/services/{settings.course_id}/formgrader").status_code == 200
    assert instructor.post(f"{api}/assignment/{LAB}/collect").json()["success"]
    r = instructor.post(f"{api}/submission/{LAB}/student1/autograde")
    assert r.json()["success"], r.text[-2000:]
    submissions = instructor.get(f"{api}/submissions/{LAB}").json()
    graded = settings.course_dir / "autograded" / "student1" / LAB / f"{LAB}.grading.json"
    why = graded.read_text()[:3000] if graded.is_file() else "no result"
    assert [(s["student"], s["score"]) for s in submissions] == [("student1", 10.0)], why

    # The kernel ran as a sandbox account, in network and PID namespaces of its own.
    autograded = nbformat.read(graded.with_name(f"{LAB}.ipynb"), as_version=4)
    probe = next(
        o["text"]
        for c in autograded.cells
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
        if "SANDBOX-PROBE" in o.get("text", "")
    ).split()
    assert probe[1].startswith(ACCOUNT_PREFIX), probe
    assert probe[2] != os.readlink("/proc/self/ns/net"), probe
    assert probe[3] != os.readlink("/proc/self/ns/pid"), probe

    # The TA sees the grades through the formgrader, and the submission's page holds
    # nothing the student wrote that could run in the TA's browser.
    ta = Client(base, "ta")
    assert [s["score"] for s in ta.get(f"{api}/submissions/{LAB}").json()] == [10.0]
    notebooks = ta.get(f"{api}/submitted_notebooks/{LAB}/{LAB}").json()
    page = ta.get(f"/services/{settings.course_id}/formgrader/submissions/{notebooks[0]['id']}/")
    assert page.status_code == 200, page.status_code
    assert "SANDBOX-PROBE" in page.text  # the student's work is shown
    assert student_script_findings(page.text, MARKER) == []
    # ... and exports the gradebook with nbgrader's own exporter.
    nbgrader = Path(sys.executable).parent / "nbgrader"
    subprocess.run(
        [str(nbgrader), "export"],
        cwd=settings.course_dir,
        check=True,
        capture_output=True,
    )
    with open(settings.course_dir / "grades.csv") as f:
        rows = list(csv.DictReader(f))
    scores = {r["student_id"]: float(r["score"]) for r in rows}
    assert scores == {"student1": 10.0, "student2": 0.0}  # student2 has not submitted

    r = instructor.post(f"{api}/assignment/{LAB}/generate_feedback")
    assert r.json()["success"], r.text[-2000:]
    r = instructor.post(f"{api}/assignment/{LAB}/release_feedback")
    assert r.json()["success"], r.text[-2000:]
    r = student.post(
        f"{user}/assignments/fetch_feedback", data={"course_id": "day2-dl", "assignment_id": LAB}
    )
    assert r.json()["success"], r.text
    feedback = list((settings.home("student1") / LAB / "feedback").rglob("*.html"))
    assert feedback, "no feedback fetched"
    text = feedback[0].read_text()
    assert "held-out accuracy" in text
    assert student_script_findings(text, MARKER) == []


def test_formgrader_runs_as_the_grader_account(hub):
    """The formgrader a TA reaches is the grader account's process, with no terminals,
    kernels or JupyterLab; only the grading service, which has no web page, is root's."""
    base, settings = hub
    processes = _service_processes(settings)
    grader_uid = pwd.getpwnam(settings.grader).pw_uid
    formgrader = [uid for cmd, uid in processes.items() if "jupyterhub-singleuser" in cmd]
    service = [uid for cmd, uid in processes.items() if "autograder.hub.grading_service" in cmd]
    assert formgrader == [grader_uid] and grader_uid != 0, processes
    assert service == [0], processes
    assert not any("--allow-root" in cmd for cmd in processes), processes
    ta = Client(base, "ta")
    prefix = f"/services/{settings.course_id}"
    assert ta.get(f"{prefix}/formgrader").status_code == 200
    assert ta.get(f"{prefix}/lab").status_code == 404
    assert ta.get(f"{prefix}/api/terminals").status_code == 404
    r = ta.post(f"{prefix}/api/kernels", json={"name": "python3"})
    assert r.status_code == 403, r.text[:300]
    # The grading service's socket: root and the grader account only.
    sock = settings.root / "run" / "grading.sock"
    assert sock.stat().st_mode & 0o007 == 0 and sock.parent.stat().st_mode & 0o007 == 0


ATTACK = """
import os, sys
from pathlib import Path

inbound, lab, me, how, target = sys.argv[1:]
stamp = "2020-01-01 00:00:00.000000 UTC"
folder = Path(inbound) / f"{me}+{lab}+{stamp}"
if how == "dangling":
    os.symlink("/nonexistent/autograder", Path(inbound) / f"{me}+{lab}+2019-01-01 00:00:00 UTC")
elif how == "impersonate":
    os.symlink(target, Path(inbound) / f"{target.rsplit('/', 1)[-1]}+{lab}+2031-01-01 00:00:00 UTC")
else:
    folder.mkdir()
    (folder / f"{lab}.ipynb").write_text(Path(target).read_text() if how == "late" else "{}")
    (folder / "timestamp.txt").write_text(stamp)
    if how == "link":
        os.symlink(target, folder / "data.npz")
"""


def test_collect_refuses_what_students_cannot_submit(hub):
    """Students' own OS accounts put links to the held-out data, the gradebook and a
    classmate's home in inbound, a dangling link, and a late submission with an early
    timestamp. Collect, started by the instructor in the formgrader, refuses each link with
    its reason, collects everyone else, and dates the late one by when its files changed."""
    from autograder.data.loaders import data_dir

    base, settings = hub
    lab_nb = example_path(LAB, "untrained")
    cases = {
        "atkheld": ("link", str(data_dir() / "heldout" / "mnist.npz")),
        "atkbook": ("link", str(settings.course_dir / "gradebook.db")),
        "atkhome": ("impersonate", str(settings.home("victim"))),
        "atkdang": ("dangling", ""),
        "late": ("late", str(lab_nb)),
        "victim": ("late", str(lab_nb)),  # an ordinary submission, at the same time
    }
    sims = dataclasses.replace(settings, instructors=(), tas=(), students=tuple(cases))
    for user in sims.students:
        sims.home(user).mkdir(parents=True, exist_ok=True)
    ensure_system_users(sims)
    for name, (how, _) in cases.items():
        if how == "late":  # the student's own copy of a notebook to submit
            copy = settings.home(name) / f"{LAB}.ipynb"
            shutil.copyfile(lab_nb, copy)
            shutil.chown(copy, name, name)
            cases[name] = (how, str(copy))
    inbound = settings.exchange / settings.course_id / "inbound"
    from nbgrader.api import Gradebook

    due = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(hours=1)
    db = f"sqlite:///{settings.course_dir / 'gradebook.db'}"
    with Gradebook(db, settings.course_id) as gb:
        gb.update_or_create_assignment(LAB, duedate=due)
        for name in cases:
            gb.update_or_create_student(name)
    try:
        for name, (how, target) in cases.items():
            subprocess.run(
                [sys.executable, "-c", ATTACK, str(inbound), LAB, name, how, target],
                user=name,
                group=name,
                extra_groups=[],
                cwd=settings.home(name),
                check=True,
                capture_output=True,
                timeout=60,
            )
        instructor = Client(base, "instructor")
        api = f"/services/{settings.course_id}/formgrader/api"
        assert instructor.get(f"/services/{settings.course_id}/formgrader").status_code == 200
        r = instructor.post(f"{api}/assignment/{LAB}/collect").json()
        assert r["success"], r.get("error", "")[-2000:]
        log = r.get("log", "")
        submitted = settings.course_dir / "submitted"
        for name, reason in [
            ("atkheld", "data.npz is a link"),
            ("atkbook", "data.npz is a link"),
            ("victim+", "is a link, not a folder"),
            ("atkdang", "is a link, not a folder"),
        ]:
            assert f"Refused {name}" in log and reason in log, log[-3000:]
        for name in ("atkheld", "atkbook", "atkdang"):
            assert not (submitted / name / LAB).exists()
        assert not list(submitted.rglob("data.npz"))
        # The victim's own submission, not the link to their home filed in their name.
        victim = submitted / "victim" / LAB / f"{LAB}.ipynb"
        assert victim.read_text() == lab_nb.read_text()
        # Late, whatever the student wrote: dated by when its files changed (after the due
        # date), not by the 2020 timestamp in its name and in its timestamp.txt.
        stamp = (submitted / "late" / LAB / "timestamp.txt").read_text()
        when = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f UTC")
        assert when > due, stamp
    finally:
        with Gradebook(db, settings.course_id) as gb:
            gb.update_or_create_assignment(LAB, duedate=None)
        for name in cases:
            subprocess.run(["userdel", name], capture_output=True, check=False)


def test_permissions(hub):
    base, settings = hub
    student = Client(base, "student2")
    formgrader = student.get(f"/services/{settings.course_id}/formgrader")
    assert formgrader.status_code == 403
    assert student.get("/user/student1/api/contents").status_code in (403, 404)
    ta = Client(base, "ta")
    assert ta.get("/hub/admin").status_code == 403
    assert ta.get("/hub/api/users").status_code == 403
    student.start_server()
    # The server's root is the student's own home: other homes, the exchange and the
    # grader's data are outside it and cannot be listed or read over HTTP.
    listing = student.get("/user/student2/api/contents").json()
    assert {item["name"] for item in listing["content"]} <= {LAB, "nbgrader_config.py"}
    # Course data for students: public/ only, read-only.
    assert sorted(p.name for p in settings.course_data.iterdir()) == ["public"]
    assert not any(
        os.access(p, os.W_OK) and p.stat().st_mode & 0o222 for p in settings.course_data.rglob("*")
    )
    for path in ("%2E%2E", "%2E%2E/student1", "%2E%2E/grader-day2-dl/day2-dl/gradebook.db"):
        r = student.get(f"/user/student2/api/contents/{path}")
        # Either refused, or normalised to a path inside the server: never another home.
        assert r.status_code in (400, 403, 404) or "content" not in r.json(), r.text[:200]
        assert "student1" not in r.text and "gradebook" not in r.text


PROBE = """
import json, os, pwd, sys

def probe(path, how):
    try:
        if how == "list":
            os.listdir(path)
        elif how == "write":
            open(path, "w").close()
        else:
            open(path, "rb").read(1)
        return "allowed"
    except PermissionError:
        return "denied"
    except OSError as e:
        return type(e).__name__

paths = json.loads(%r)
result = {k: probe(*v) for k, v in paths.items()}
print(json.dumps({"user": pwd.getpwuid(os.getuid()).pw_name, **result}))
"""


def test_student_kernel_is_confined_by_the_os(hub):
    """Code in a student's kernel runs as that student's OS account: their own home and the
    public course data, nothing of other students, the grader or the hub."""
    from autograder.data.loaders import data_dir

    base, settings = hub
    heldout = data_dir() / "heldout"
    targets = {
        "heldout_file": (str(heldout / "mnist.npz"), "read"),
        "heldout_dir": (str(heldout), "list"),
        "other_home": (str(settings.home("student1")), "list"),
        "gradebook": (str(settings.course_dir / "gradebook.db"), "read"),
        "inbound": (str(settings.exchange / "day2-dl" / "inbound"), "list"),
        "hub_db": (str(settings.state / "jupyterhub.sqlite"), "read"),
        "public_data": (str(settings.course_data / "public" / "mnist.npz"), "read"),
        "public_write": (str(settings.course_data / "public" / "x.txt"), "write"),
        "own_home": (str(settings.home("student2") / "x.txt"), "write"),
    }
    mirror = data_dir() / "keras"  # keras-format data, the held-out split's source
    if mirror.is_dir():
        targets["keras_mirror"] = (str(mirror), "list")
    for name, (path, _) in targets.items():
        if not name.endswith(("_write", "own_home")):
            assert Path(path).exists(), path  # the grader (root here) sees every one of them
    assert heldout.stat().st_mode & 0o777 == 0o700
    student = Client(base, "student2")
    student.start_server()
    result = json.loads(student.run_code(PROBE % json.dumps(targets)))
    assert result == {
        "user": "student2",
        "heldout_file": "denied",
        "heldout_dir": "denied",
        "other_home": "denied",
        "gradebook": "denied",
        "inbound": "denied",
        "hub_db": "denied",
        "public_data": "allowed",
        "public_write": "denied",
        "own_home": "allowed",
        **({"keras_mirror": "denied"} if mirror.is_dir() else {}),
    }
    assert pwd.getpwnam("student2").pw_uid != pwd.getpwnam("student1").pw_uid != 0


def test_thirty_students_submit_at_once(hub):
    base, settings = hub
    students = [f"sim{i:02d}" for i in range(30)]
    forger = "sim30"
    sims = dataclasses.replace(settings, instructors=(), tas=(), students=(*students, forger))
    for user in sims.users:
        sims.home(user).mkdir(parents=True, exist_ok=True)
    ensure_system_users(sims)
    try:
        procs = [submit_as_os_user(settings, s, s, LAB) for s in students]  # all at once
        for proc in procs:
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, out[-2000:]
        # Then one student files a later submission under another student's name.
        proc = submit_as_os_user(settings, forger, students[0], LAB)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-2000:]
        inbound = settings.exchange / "day2-dl" / "inbound"
        assert set(students) <= {p.name.split("+")[0] for p in inbound.iterdir()}
        instructor = Client(base, "instructor")
        api = f"/services/{settings.course_id}/formgrader/api"
        assert instructor.get(f"/services/{settings.course_id}/formgrader").status_code == 200
        assert instructor.post(f"{api}/assignment/{LAB}/collect").json()["success"]
        submitted = settings.course_dir / "submitted"
        collected = {p.name for p in submitted.iterdir() if (p / LAB / f"{LAB}.ipynb").is_file()}
        assert set(students) <= collected, sorted(set(students) - collected)
        # The forged, later one was refused (owner check): the student's own was collected.
        assert "FORGED" not in (submitted / students[0] / LAB / f"{LAB}.ipynb").read_text()
    finally:
        for user in (*students, forger):
            subprocess.run(["userdel", user], capture_output=True, check=False)


CHROMIUM = "/usr/bin/chromium"
# Flags for a machine with no network beyond loopback (see the env notes): without the
# background-networking ones Chromium keeps trying, and failing, to reach Google's hosts.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def test_student_sees_the_lab_in_a_browser(hub, tmp_path):
    """Headless Chromium: log in, open Nbgrader > Assignment List, see the lab."""
    from playwright.sync_api import sync_playwright

    base, _ = hub
    assert Path(CHROMIUM).is_file(), "Debian's chromium is missing: run `make setup`"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(base + "/hub/login")
            page.fill("#username_input", "student2")
            page.fill("#password_input", PASSWORD)
            page.click("#login_submit")
            page.wait_for_url("**/user/student2/**", timeout=90_000)
            page.get_by_text("Nbgrader", exact=True).click(timeout=60_000)
            page.get_by_text("Assignment List", exact=True).click()
            row = page.get_by_text(LAB, exact=True).first
            row.wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "assignment-list.png"))
        finally:
            browser.close()
    assert (tmp_path / "assignment-list.png").stat().st_size > 0


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_stopping_autograder_hub_leaves_nothing(signame, tmp_path, staged_data):
    """`autograder hub` stopped as a service manager (SIGTERM) or Ctrl-C (SIGINT) stops it:
    the hub, its proxy, the formgrader service, a user's server and that user's kernel are
    all gone afterwards, and so are the ports they listened on."""
    course, student = f"stop-{signame.lower()}", f"stop{signame.lower()}"
    root = hub_root()
    settings = tmp_path / "course.toml"
    ports = _hub_settings(settings, root, course=course, roster=f'students = ["{student}"]')
    users = load_settings(settings).users
    base = f"http://127.0.0.1:{ports[0]}"
    cli = Path(sys.executable).parent / "autograder"
    proc = subprocess.Popen(
        [str(cli), "hub", "--settings", str(settings)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until_up(base + "/hub/login", timeout=120)
        client = Client(base, student)
        client.start_server()
        kernels = f"/user/{student}/api/kernels"
        assert client.post(kernels, json={"name": "python3"}).status_code == 201
        running = processes_of(root, users)
        for part in (
            "jupyterhub -f",
            "configurable-http-proxy",
            "--ServerApp.root_dir",
            "autograder.hub.grading_service",
            "ipykernel",
        ):
            assert any(part in p for p in running), (part, running)
        assert len([p for p in running if "jupyterhub-singleuser" in p]) == 2, running

        proc.send_signal(getattr(signal, signame))
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-2000:]
        assert "stopping the hub" in out
        left = processes_of(root, users)
        assert not left, f"left after {signame}: {left}"
        assert not [p for p in ports if listening(p)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for user in users:
            subprocess.run(["userdel", user], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
