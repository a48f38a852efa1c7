"""What the hub tests share: a hub's folder and ports, finding what it left, one person's
browser session, and a student's fetch and submit done as their own OS account."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import requests

__all__ = [
    "PASSWORD",
    "Client",
    "free_ports",
    "hub_root",
    "listening",
    "live_processes",
    "processes_of",
    "submit_as_os_user",
]

PASSWORD = "day2-dl-demo"


def free_ports(n: int) -> list[int]:
    """``n`` ports free now, below the kernel's ephemeral range: the kernel never picks
    those for another socket (an outgoing connection, a bind to port 0), so they stay
    free between this check and the hub's own binds. Ports the kernel picked and this
    function released were open to anything in between."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    start = 10000 if low >= 10000 + 100 * n else 1024  # unprivileged, clear of common ones
    if low - start < 10 * n:
        raise RuntimeError(f"too few ports below the ephemeral range (it starts at {low})")
    pick = random.Random()
    ports: list[int] = []
    for _ in range(1000):
        if len(ports) == n:
            break
        port = pick.randrange(start, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # taken: another
                continue
        if port not in ports:
            ports.append(port)
    if len(ports) < n:
        raise RuntimeError(f"no {n} free ports found below {low}")
    return ports


def hub_root() -> Path:
    # Students' servers run as their own OS accounts, so the hub's folder must be one they
    # can enter: pytest's own temporary folders are 0700.
    root = Path(tempfile.mkdtemp(prefix="autograder-hub-", dir="/tmp"))
    root.chmod(0o755)
    return root


def live_processes() -> Iterator[tuple[int, int, str, str]]:
    """Every live process (not a zombie), from /proc: pid, uid, command line, working folder."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            uid = entry.stat().st_uid
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone, or a kernel thread
        if state != "Z":
            yield int(entry.name), uid, cmdline, cwd


def processes_of(root: Path, users: tuple[str, ...]) -> list[str]:
    """Every process that belongs to a hub under ``root``: run by one of its users, working
    in its folder, or naming it on its command line. Found from /proc, not from the hub's
    own bookkeeping, so a process it lost track of is found too."""
    uids = set()
    for user in users:
        with contextlib.suppress(KeyError):
            uids.add(pwd.getpwnam(user).pw_uid)
    return [
        f"{pid} uid={uid} {cmdline[:150]}"
        for pid, uid, cmdline, cwd in live_processes()
        if pid != os.getpid() and (uid in uids or cwd.startswith(str(root)) or str(root) in cmdline)
    ]


def listening(port: int, wait: float = 10) -> bool:
    start = time.monotonic()
    while time.monotonic() - start < wait:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return False
        time.sleep(0.3)
    return True


class Client:
    """One person's browser session: hub login cookie, then each server's own cookies."""

    def __init__(self, base: str, user: str) -> None:
        self.base, self.user, self.s = base, user, requests.Session()
        self.s.get(base + "/hub/login")
        r = self.s.post(
            base + "/hub/login",
            data={"username": user, "password": PASSWORD, "_xsrf": self._xsrf("/hub/")},
        )
        assert r.status_code == 200, r.status_code

    def _xsrf(self, prefix: str) -> str:
        values = [
            c.value or ""
            for c in self.s.cookies
            if c.name == "_xsrf" and prefix.startswith(c.path or "/")
        ]
        return values[-1] if values else ""

    def get(self, path: str, **kw) -> requests.Response:
        return self.s.get(self.base + path, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self.s.post(self.base + path, headers={"X-XSRFToken": self._xsrf(path)}, **kw)

    def put(self, path: str, **kw) -> requests.Response:
        return self.s.put(self.base + path, headers={"X-XSRFToken": self._xsrf(path)}, **kw)

    def run_code(self, code: str, timeout: float = 60) -> str:
        """Run ``code`` in a new kernel of this user's server; its stdout."""
        import websocket

        prefix = f"/user/{self.user}/api/kernels"
        kernel = self.post(prefix, json={"name": "python3"}).json()["id"]
        cookies = "; ".join(f"{c.name}={c.value}" for c in self.s.cookies)
        url = self.base.replace("http", "ws", 1) + f"{prefix}/{kernel}/channels"
        ws = websocket.create_connection(url, cookie=cookies, timeout=timeout)
        try:
            msg_id = uuid.uuid4().hex
            header = {"msg_id": msg_id, "username": self.user, "session": uuid.uuid4().hex}
            content = {"code": code, "silent": False, "allow_stdin": False, "stop_on_error": True}
            ws.send(
                json.dumps(
                    {
                        "header": {**header, "msg_type": "execute_request", "version": "5.3"},
                        "parent_header": {},
                        "metadata": {},
                        "content": content,
                        "channel": "shell",
                        "buffers": [],
                    }
                )
            )
            out: list[str] = []
            while True:
                msg = json.loads(ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, body = msg["msg_type"], msg["content"]
                if kind == "stream":
                    out.append(body["text"])
                elif kind == "error":
                    raise AssertionError("\n".join(body["traceback"]))
                elif kind == "status" and body["execution_state"] == "idle":
                    return "".join(out)
        finally:
            ws.close()
            self.s.delete(
                self.base + f"{prefix}/{kernel}", headers={"X-XSRFToken": self._xsrf(prefix)}
            )

    def start_server(self, timeout: float = 60) -> None:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            self.get(f"/user/{self.user}/lab")  # spawns, then picks up the server's cookie
            if self.get(f"/user/{self.user}/api/status").status_code == 200:
                return
            time.sleep(0.5)
        raise TimeoutError(f"server of {self.user} did not start")


SUBMIT = """
import json, sys
from pathlib import Path
from nbgrader.auth import Authenticator
from nbgrader.coursedir import CourseDirectory
from nbgrader.exchange.default import ExchangeFetchAssignment, ExchangeSubmit
from traitlets.config import Config

exchange, home, student, lab, submit_as, times = sys.argv[1:]
answer = sys.stdin.read()
c = Config()
c.Exchange.root = exchange
c.Exchange.assignment_dir = home
c.CourseDirectory.course_id = "day2-dl"
c.CourseDirectory.assignment_id = lab
c.CourseDirectory.root = home
nb = Path(home, lab, lab + ".ipynb")
c.CourseDirectory.student_id = student
if not nb.exists():
    coursedir = CourseDirectory(config=c)
    auth = Authenticator(config=c)
    ExchangeFetchAssignment(coursedir=coursedir, authenticator=auth, config=c).start()
if answer:
    nb.write_text(answer)
if submit_as != student:
    data = json.loads(nb.read_text())
    data["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "FORGED"})
    nb.write_text(json.dumps(data))
c.CourseDirectory.student_id = submit_as
for _ in range(int(times)):
    coursedir = CourseDirectory(config=c)
    ExchangeSubmit(coursedir=coursedir, authenticator=Authenticator(config=c), config=c).start()
"""


def submit_as_os_user(
    settings, student: str, submit_as: str, lab: str, *, answer: str = "", times: int = 1
) -> subprocess.Popen:
    """What a student's server does on fetch and submit, as the student's own OS account:
    fetch (once), write ``answer`` into the notebook if given, submit ``times`` times."""
    home = settings.home(student)
    args = [str(settings.exchange), str(home), student, lab, submit_as, str(times)]
    proc = subprocess.Popen(
        [sys.executable, "-c", SUBMIT, *args],
        user=student,
        group=student,
        extra_groups=[],
        cwd=home,
        env={**os.environ, "HOME": str(home)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(answer)
    proc.stdin.close()
    proc.stdin = None  # written and closed: communicate() has nothing to send
    return proc
