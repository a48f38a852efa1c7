"""Grade on submit: a Hub-managed service that grades each submission as it arrives and
returns the feedback to the student.

It runs as the course's grader account, the account the formgrader runs as, and does what
a TA would in the formgrader, one submission at a time: collect the student's newest
submission (``OwnerCheckedCollect``), autograde it (the notebook is executed by the
root-owned grading service, :mod:`.grading_service`, the one privileged step), generate
the feedback and release it. Each grading is a child process of its own. Nothing it runs
is root; its web pages (``/services/<course>-submit/``: a student's statuses and feedback,
through the hub's login) face the network as the grader account.

The same loop releases each lab when its ``opens`` time in ``schedule.toml`` has come, and
leaves alone the labs whose ``grade_on_submit`` is false (exams: staff grade them).
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autograder.errors import ConfigError
from autograder.hub.submit_queue import FairQueue, SubmissionStatus

__all__ = ["SubmitService", "grade_one", "main", "parse_entry"]

POLL_S = 2.0
_STUDENTS_TTL_S = 10.0


def parse_entry(name: str) -> tuple[str, str] | None:
    """(student, lab) of an ``inbound`` entry, ``student+lab+timestamp+random``."""
    parts = name.split("+")
    if len(parts) != 4 or not all(parts[:2]):
        return None
    return parts[0], parts[1]


@dataclass(frozen=True)
class SubmitSettings:
    """What the service is given on its command line by the hub's configuration."""

    course_dir: Path
    exchange: Path
    course_id: str
    labs: tuple[str, ...]
    state: Path
    staff: tuple[str, ...]
    check_owner: bool


def _config(course_dir: Path) -> Any:
    """The grader's nbgrader settings (its home's ``nbgrader_config.py``), as the
    formgrader reads them."""
    from traitlets.config.loader import PyFileConfigLoader

    home = course_dir.parent
    return PyFileConfigLoader("nbgrader_config.py", path=str(home)).load_config()


class SubmitService:
    """Finds new submissions, queues them fairly, grades them one at a time."""

    def __init__(self, settings: SubmitSettings) -> None:
        settings.state.mkdir(parents=True, exist_ok=True)
        settings.state.chmod(0o700)
        self.s = settings
        self.queue = FairQueue(settings.state / "queue.json")
        self.stopping = threading.Event()
        self.children: set[subprocess.Popen[str]] = set()
        self._students: tuple[float, frozenset[str]] = (0.0, frozenset())
        self._schedule_cache: tuple[tuple[float, ...], dict[str, Any]] | None = None

    # ------------------------------------------------------------------ finding
    def _say(self, text: str) -> None:
        print(f"[grade-on-submit] {text}", file=sys.stderr, flush=True)

    def students(self) -> frozenset[str]:
        """The course's students, from its gradebook (re-read every few seconds)."""
        read_at, known = self._students
        if time.monotonic() - read_at > _STUDENTS_TTL_S:
            from autograder.course import Course
            from autograder.roster import student_ids

            known = student_ids(Course.open(self.s.course_dir).db_url)
            self._students = (time.monotonic(), known)
        return known

    def _schedule(self) -> dict[str, Any]:
        """The course's schedule, read and checked again only when the file changed (the
        loop asks every 2 s); a broken file is reported once per change."""
        from autograder.schedule import SCHEDULE_FILE, load_schedule

        path = self.s.course_dir / SCHEDULE_FILE
        try:
            st = path.stat()
            stamp: tuple[float, ...] = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = ()
        if self._schedule_cache is not None and self._schedule_cache[0] == stamp:
            return self._schedule_cache[1]
        try:
            schedule: dict[str, Any] = load_schedule(self.s.course_dir)
        except ConfigError as exc:
            self._say(f"schedule not read: {exc}")
            schedule = {}
        self._schedule_cache = (stamp, schedule)
        return schedule

    def scan(self) -> None:
        """One round: labs whose time has come released, new submissions queued."""
        schedule = self._schedule()
        self.release_open_labs(schedule)
        inbound = self.s.exchange / self.s.course_id / "inbound"
        try:
            entries = set(os.listdir(inbound))
        except OSError:
            return
        new = self.queue.unseen(entries)
        if not new:
            return
        students = self.students()
        for entry in sorted(new):
            parsed = parse_entry(entry)
            if parsed is None or parsed[1] not in self.s.labs or parsed[0] not in students:
                self.queue.ignore(entry)
                continue
            student, lab = parsed
            if self.s.check_owner and not self._owned_by(inbound / entry, student):
                self.queue.ignore(entry)  # filed under another's name: collect refuses it too
                continue
            dates = schedule.get(lab)
            grade = dates.grade_on_submit if dates is not None else True
            reason = "" if grade else "this lab is not graded on submit: staff grade it"
            self.queue.submitted(student, lab, entry, grade=grade, reason=reason)

    @staticmethod
    def _owned_by(path: Path, student: str) -> bool:
        try:
            return os.lstat(path).st_uid == pwd.getpwnam(student).pw_uid
        except (OSError, KeyError):
            return False

    def release_open_labs(self, schedule: dict[str, Any]) -> None:
        from autograder.schedule import is_open

        outbound = self.s.exchange / self.s.course_id / "outbound"
        for lab in self.s.labs:
            if not is_open(schedule, lab) or (outbound / lab).is_dir():
                continue
            proc = self._child(["release", lab], timeout=300)
            self._say(f"{lab} opens: released" if proc.returncode == 0 else proc.stdout[-500:])

    # ------------------------------------------------------------------ grading
    def _child(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "autograder.hub.on_submit", *args]
        cmd += ["--course-dir", str(self.s.course_dir)]
        proc = subprocess.Popen(
            cmd,
            cwd=self.s.course_dir.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.children.add(proc)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            out += f"\nran past {timeout:.0f} s"
        finally:
            self.children.discard(proc)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, "")

    def grade(self, student: str, lab: str) -> dict[str, Any]:
        """Grade one pair in a child process; what ``finished`` records."""
        from autograder.settings import Limits

        limit = Limits.from_env().notebook_timeout_s + 1200  # kernel, evaluation, feedback
        proc = self._child(["grade", student, lab], timeout=limit)
        last = proc.stdout.strip().splitlines()[-1:] or [""]
        try:
            result: dict[str, Any] = json.loads(last[0])
        except json.JSONDecodeError:
            tail = " | ".join(proc.stdout.strip().splitlines()[-3:])
            return {"state": "failed", "reason": f"grading stopped: {tail}"[:500]}
        return result

    def work(self) -> None:
        while not self.stopping.is_set():
            job = self.queue.next(timeout=1.0)
            if job is None:
                continue
            started = time.monotonic()
            result = self.grade(*job)
            if self.stopping.is_set() and result.get("state") != "graded":
                return  # stopped mid-grading: queued again at the next start
            self.queue.finished(*job, **result)
            self._say(
                f"{job[0]} {job[1]}: {result.get('state')} in {time.monotonic() - started:.1f} s"
            )

    def watch(self) -> None:
        while not self.stopping.wait(POLL_S):
            try:
                self.scan()
            except Exception as exc:  # one bad round must not stop the service
                self._say(f"scan failed: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self.stopping.set()
        for proc in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()


# ---------------------------------------------------------------------- one grading


def grade_one(course_dir: Path, student: str, lab: str) -> dict[str, Any]:
    """Collect, autograde, generate and release feedback for one student and lab, as the
    formgrader would; the outcome for the student's status."""
    from nbgrader.api import Gradebook
    from nbgrader.apps import NbGraderAPI

    from autograder.course_lock import writing_grades

    api = NbGraderAPI(config=_config(course_dir))
    api.coursedir.student_id = student  # collect: this student's submissions only
    steps = (
        ("collect", lambda: api.collect(lab)),
        ("autograde", lambda: api.autograde(lab, student)),
        ("feedback", lambda: api.generate_feedback(lab, student)),
        ("release feedback", lambda: api.release_feedback(lab, student)),
    )
    # A batch recording grades meanwhile waits for this round, and this round for it.
    with writing_grades(course_dir):
        for name, step in steps:
            outcome = step()
            if not outcome.get("success"):
                why = (outcome.get("error") or outcome.get("log") or "").strip().splitlines()
                return {"state": "failed", "reason": f"{name}: {' | '.join(why[-2:])}"[:500]}
        with Gradebook(api.coursedir.db_url) as gb:
            sub = gb.find_submission(lab, student)
            return {
                "state": "graded",
                "score": float(sub.score),
                "max_score": float(sub.max_score),
                "late_penalty": float(sub.late_submission_penalty or 0.0),
                "reason": "",
            }


def release_lab(course_dir: Path, lab: str) -> bool:
    from nbgrader.apps import NbGraderAPI

    api = NbGraderAPI(config=_config(course_dir))
    return bool(api.release_assignment(lab).get("success"))


# ---------------------------------------------------------------------- web pages


def _page(statuses: list[SubmissionStatus], prefix: str, user: str) -> str:
    def when(t: float | None) -> str:
        return "" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")

    rows = []
    for s in statuses:
        score = "" if s.score is None else f"{s.score:g} / {s.max_score:g}"
        if s.late_penalty:
            score += f" (late: -{s.late_penalty:g})"
        link = (
            f'<a href="{prefix}feedback/{html.escape(s.lab)}?student={html.escape(s.student)}">'
            "feedback</a>"
            if s.state == "graded"
            else ""
        )
        cells = [s.student, s.lab, s.state, when(s.submitted_at), score, s.reason]
        rows.append(
            "<tr>"
            + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
            + f"<td>{link}</td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>" for h in ("Student", "Lab", "Status", "Submitted (UTC)", "Score", "", "")
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Grading</title>"
        "<meta http-equiv='refresh' content='15'></head><body>"
        f"<h1>Your submissions, {html.escape(user)}</h1>"
        "<p>Each submission is graded as it arrives; this page refreshes itself.</p>"
        f"<table border='1'><tr>{head}</tr>{''.join(rows)}</table></body></html>"
    )


# Feedback pages are made inert when generated; the browser is told so as well.
_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _app(service: SubmitService) -> Any:
    from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
    from tornado import web

    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")

    class _Base(HubOAuthenticated, web.RequestHandler):
        def whose(self) -> tuple[str, str | None]:
            """(user, student whose statuses to show): staff may ask for anyone's."""
            user = self.get_current_user()["name"]
            asked = self.get_argument("student", None)
            if user in service.s.staff:
                return user, asked
            if asked not in (None, user):
                raise web.HTTPError(403)
            return user, user

        def set_default_headers(self) -> None:
            self.set_header(
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
            )
            self.set_header("X-Content-Type-Options", "nosniff")

    class Status(_Base):
        @web.authenticated
        def get(self) -> None:
            user, student = self.whose()
            self.finish(_page(service.queue.status(student), prefix, user))

    class StatusApi(_Base):
        @web.authenticated
        def get(self) -> None:
            _, student = self.whose()
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps([s.to_json() for s in service.queue.status(student)]))

    class Feedback(_Base):
        @web.authenticated
        def get(self, lab: str) -> None:
            user, student = self.whose()
            if lab not in service.s.labs:
                raise web.HTTPError(404)
            folder = service.s.course_dir / "feedback" / (student or user) / lab
            pages = sorted(folder.glob("*.html")) if folder.is_dir() else []
            if not pages:
                raise web.HTTPError(404, "no feedback yet")
            # Made inert when it was generated (NeutraliseBeforeReport); the policy above
            # stands behind that.
            self.finish(pages[0].read_bytes())

    return web.Application(
        [
            (prefix, Status),
            (prefix + "api/status", StatusApi),
            (prefix + r"feedback/([A-Za-z0-9_]+)", Feedback),
            (prefix + "oauth_callback", HubOAuthCallbackHandler),
        ],
        cookie_secret=os.urandom(32),
    )


def serve(settings: SubmitSettings) -> None:
    from urllib.parse import urlparse

    from tornado.ioloop import IOLoop

    if os.geteuid() == 0:
        raise ConfigError("the grade-on-submit service faces the network: not as root")
    service = SubmitService(settings)
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:9998"))
    _app(service).listen(url.port or 80, address=url.hostname or "127.0.0.1")
    threads = [threading.Thread(target=f, daemon=True) for f in (service.watch, service.work)]
    for thread in threads:
        thread.start()
    loop = IOLoop.current()

    def stop() -> None:
        service.stop()
        loop.stop()

    # asyncio's signal handlers run in the loop, which their signal wakes. A plain
    # ``signal.signal`` handler that schedules ``loop.stop`` from the loop's own thread
    # does not wake it: the hub's SIGINT and SIGTERM then waited for the next request.
    aio = loop.asyncio_loop  # type: ignore[attr-defined]  # tornado's AsyncIOMainLoop
    for signum in (signal.SIGTERM, signal.SIGINT):
        aio.add_signal_handler(signum, stop)
    try:
        service.scan()
        loop.start()
    finally:
        service.stop()
        for thread in threads:
            thread.join(timeout=10)


# ---------------------------------------------------------------------- command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.hub.on_submit")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--exchange", type=Path, required=True)
    p.add_argument("--course-id", required=True)
    p.add_argument("--lab", action="append", default=[])
    p.add_argument("--state", type=Path, required=True)
    p.add_argument("--staff", action="append", default=[])
    p.add_argument("--check-owner", action="store_true")
    p = sub.add_parser("grade")
    p.add_argument("student")
    p.add_argument("lab")
    p = sub.add_parser("release")
    p.add_argument("lab")
    for p in sub.choices.values():
        p.add_argument("--course-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.action == "serve":
        serve(
            SubmitSettings(
                course_dir=args.course_dir,
                exchange=args.exchange,
                course_id=args.course_id,
                labs=tuple(args.lab),
                state=args.state,
                staff=tuple(args.staff),
                check_owner=args.check_owner,
            )
        )
        return 0
    if args.action == "release":
        return 0 if release_lab(args.course_dir, args.lab) else 1
    try:
        result = grade_one(args.course_dir, args.student, args.lab)
    except Exception as exc:
        result = {"state": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
