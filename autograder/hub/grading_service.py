"""The privileged step: a submitted notebook executed in the sandbox for a grader that is
not root.

The formgrader runs as the course's grader account, which cannot create sandbox accounts
or namespaces, and must not read the held-out data. It hands each notebook it autogrades
(already sanitized by nbgrader, deleted graded cells restored) to this service over a Unix
socket. The service runs as root, checks who is asking (the peer's uid, from the kernel),
executes the notebook exactly as a batch worker does (``GraderExecute``: sandbox account,
namespaces, limits), evaluates the captured model in a clean process, and answers with the
executed cells and the grading result. The grader writes them into the gradebook and the
autograded notebook itself.

It takes nothing else: no paths, no course directory, no gradebook. Its settings are a JSON
file the launcher writes into the hub's state folder (root's, 0700); the notebook arrives
as bytes; it runs with ``python -I`` from the installed package, so no file the grader
account can write is ever imported or executed. Each request runs in a fresh child process:
one submission cannot affect the next.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import pwd
import re
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from nbformat import NotebookNode, from_dict
from traitlets import Unicode

from autograder.errors import GradingError
from autograder.fstree import remove_tree, write_fresh
from autograder.grading.execute import GraderExecute
from autograder.results import GradingResult

__all__ = [
    "HelperExecute",
    "HelperSettings",
    "execute_request",
    "request_execution",
    "serve",
]

# A lab notebook with its model outputs is a few MiB; the cap keeps one request from
# exhausting the service.
MAX_REQUEST_BYTES = 64 * 2**20
MAX_REPLY_BYTES = 256 * 2**20
MAX_FILES = 64
# Names of the other submitted files handed along with the notebook: plain names only.
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\- ]{0,127}$")
# Seconds on top of the notebook's own limit: kernel start, evaluation, replies.
_MARGIN_S = 900


@dataclass(frozen=True)
class HelperSettings:
    """What the service needs, written by the launcher (root) as data."""

    socket: str
    grader: str  # the one account, besides root, that may ask
    labs: tuple[str, ...]
    environment: dict[str, str] = field(default_factory=dict)  # AUTOGRADER_* settings
    workers: int = 1

    def write(self, path: Path) -> None:
        write_fresh(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, path: Path) -> HelperSettings:
        data = json.loads(path.read_text())
        return cls(
            socket=str(data["socket"]),
            grader=str(data["grader"]),
            labs=tuple(str(lab) for lab in data["labs"]),
            environment={str(k): str(v) for k, v in data.get("environment", {}).items()},
            workers=int(data.get("workers", 1)),
        )


# ----------------------------------------------------------------------------- service


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def _receive(conn: socket.socket, cap: int) -> bytes:
    chunks, size = [], 0
    while chunk := conn.recv(1 << 20):
        size += len(chunk)
        if size > cap:
            raise ValueError(f"request larger than {cap // 2**20} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        conn: socket.socket = self.request
        uid = _peer_uid(conn)
        if uid not in self.server.allowed:
            reply = {"ok": False, "error": f"uid {uid} may not ask the grading service"}
        else:
            try:
                data = _receive(conn, MAX_REQUEST_BYTES)
                refused = _refusal(self.server.settings, json.loads(data))
                if refused:
                    reply = {"ok": False, "error": refused}
                else:
                    with self.server.slots:
                        reply = self.server.run_child(data)
            except Exception as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(reply).encode())


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, settings: HelperSettings, settings_path: Path) -> None:
        self.settings, self.settings_path = settings, settings_path
        grader = pwd.getpwnam(settings.grader)
        self.allowed = {0, grader.pw_uid}
        self.slots = threading.Semaphore(max(1, settings.workers))
        path = Path(settings.socket)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Only root and the grader's group may reach the socket; the peer check stands
        # behind that.
        os.chown(path.parent, 0, grader.pw_gid, follow_symlinks=False)
        path.parent.chmod(0o750)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        super().__init__(str(path), _Handler)
        os.chown(path, 0, grader.pw_gid)
        path.chmod(0o660)

    def run_child(self, data: bytes) -> dict[str, Any]:
        from autograder.settings import Limits

        limit = Limits.from_env().notebook_timeout_s + _MARGIN_S  # main() applied settings
        out = Path(tempfile.mkdtemp(prefix="autograder-helper-"))
        try:
            cmd = [sys.executable, "-I", "-m", "autograder.hub.grading_service", "execute"]
            proc = subprocess.run(
                [*cmd, "--settings", str(self.settings_path), "--out", str(out / "reply.json")],
                input=data,
                capture_output=True,
                timeout=limit,
                cwd=out,
                check=False,
            )
            reply_file = out / "reply.json"
            if proc.returncode != 0 or not reply_file.is_file():
                tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
                return {"ok": False, "error": f"execution failed: {' | '.join(tail)}"[:800]}
            reply: dict[str, Any] = json.loads(reply_file.read_text())
            return reply
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"execution ran past {limit} s"}
        finally:
            remove_tree(out)


def serve(settings_path: Path) -> None:
    """Run the service until it is stopped (SIGTERM from the hub)."""
    if os.geteuid() != 0:
        raise GradingError("the grading service starts sandboxed kernels: run it as root")
    settings = HelperSettings.read(settings_path)
    # What a service killed mid-request left: its children's temporary folders, and their
    # slots, which the next requests might never take again.
    from autograder.sandbox.accounts import clean_free_slots
    from autograder.sandbox.files import remove_stale_temps

    remove_stale_temps()
    clean_free_slots()
    # The hub stops its services with SIGTERM: leave through the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with _Server(settings, settings_path) as server:
        try:
            server.serve_forever()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(settings.socket)


# ----------------------------------------------------------------------------- one request


def _files(raw: Any) -> dict[str, bytes]:
    if not isinstance(raw, dict) or len(raw) > MAX_FILES:
        raise ValueError(f"files: at most {MAX_FILES} named files")
    files = {}
    for name, data in raw.items():
        if not isinstance(name, str) or not _FILE_NAME.match(name) or not isinstance(data, str):
            raise ValueError(f"files: refused name {str(name)[:80]!r}")
        files[name] = base64.b64decode(data, validate=True)
    return files


def _refusal(settings: HelperSettings, request: Any) -> str | None:
    """Why a request is not taken, checked before anything runs; None when it is."""
    from autograder.rubric import lab_ids

    if not isinstance(request, dict):
        return "not a request"
    lab = request.get("lab")
    if lab not in settings.labs or lab not in lab_ids():
        return f"not a lab of this course: {str(lab)[:80]!r}"
    nb = request.get("notebook")
    if not isinstance(nb, dict) or nb.get("nbformat") != 4 or not isinstance(nb.get("cells"), list):
        return "not a version 4 notebook"
    try:
        _files(request.get("files", {}))
    except ValueError as exc:
        return str(exc)
    return None


def execute_request(settings: HelperSettings, data: bytes) -> dict[str, Any]:
    """Execute and evaluate one notebook as a batch worker does; the reply (a plain dict)."""
    from traitlets.config import Config

    from autograder.course import configure_grader
    from autograder.grading.evaluation_server import grade_in_subprocess
    from autograder.rubric import load_rubric
    from autograder.sandbox.files import grader_temp

    request = json.loads(data)
    refused = _refusal(settings, request)
    if refused:
        return {"ok": False, "error": refused}
    lab = request["lab"]
    nb = from_dict(request["notebook"])
    files = _files(request.get("files", {}))
    config = Config()
    configure_grader(config)
    config.GraderExecute.restore_missing_cells = False  # the grader did, from its gradebook
    notebook = load_rubric(lab).notebook
    work = grader_temp(lab)
    try:
        for name, content in files.items():
            write_fresh(work / name, content)
        resources: dict[str, Any] = {
            "nbgrader": {"assignment": lab, "notebook": notebook, "student": ""},
            "metadata": {"path": str(work)},
        }
        nb, resources = GraderExecute(config=config).preprocess(nb, resources)
        state = resources.get("autograder", {})
        result = None
        artifacts = state.get("artifacts")
        if artifacts is not None:
            try:
                result = grade_in_subprocess(lab, Path(artifacts))
            finally:
                remove_tree(artifacts)
    finally:
        remove_tree(work)
    return {
        "ok": True,
        "cells": nb.cells,
        "result": result.to_json() if result is not None else None,
        **{k: state.get(k) for k in _STATE_KEYS if k in state},
    }


# What the executing side records for the grader (see GraderExecute.preprocess).
_STATE_KEYS = ("capture_outputs", "sandbox", "network_isolated", "output_dropped", "limit")


# ----------------------------------------------------------------------------- client


def request_execution(
    socket_path: str, lab: str, nb: NotebookNode, files: dict[str, bytes], *, timeout: float
) -> dict[str, Any]:
    """Ask the service to execute ``nb``; its reply. Raises GradingError when it refuses."""
    payload = json.dumps(
        {
            "lab": lab,
            "notebook": nb,
            "files": {k: base64.b64encode(v).decode() for k, v in files.items()},
        }
    ).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(socket_path)
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            reply: dict[str, Any] = json.loads(_receive(conn, MAX_REPLY_BYTES) or b"{}")
        except (OSError, ValueError) as exc:
            raise GradingError(f"the grading service did not answer: {exc}") from exc
    if not reply.get("ok"):
        raise GradingError(f"the grading service refused: {reply.get('error', 'no reply')}")
    return reply


def _submitted_files(folder: str | None, notebook: str) -> dict[str, bytes]:
    """The regular files beside the notebook (never through a link), as nbgrader would
    put them in the kernel's folder."""
    if not folder:
        return {}
    files: dict[str, bytes] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name in (notebook, "timestamp.txt") or not _FILE_NAME.match(entry.name):
            continue
        if not entry.is_file(follow_symlinks=False) or len(files) >= MAX_FILES:
            continue
        with contextlib.suppress(OSError):
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                files[entry.name] = f.read(MAX_REQUEST_BYTES // 2)
    return files


class HelperExecute(GraderExecute):
    """``GraderExecute`` for a grader that is not root: the notebook is executed by the
    grading service (:func:`serve`) and the reply stands in for the local execution."""

    runs_after: ClassVar[tuple[type, ...]] = ()
    runs_before: ClassVar[tuple[type, ...]] = ()

    socket_path = Unicode("", help="The grading service's socket; empty: execute here").tag(
        config=True
    )

    def preprocess(self, nb: NotebookNode, resources: Any) -> tuple[NotebookNode, Any]:
        if not self.socket_path:
            return super().preprocess(nb, resources)
        nb = self._restore_deleted_cells(nb, resources)
        info = resources["nbgrader"]
        name = f"{info['notebook']}.ipynb"
        files = _submitted_files(resources.get("metadata", {}).get("path"), name)
        timeout = self.limits().notebook_timeout_s + _MARGIN_S
        reply = request_execution(self.socket_path, info["assignment"], nb, files, timeout=timeout)
        nb.cells = [from_dict(c) for c in reply["cells"]]
        state = resources.setdefault("autograder", {})
        state.update({k: reply[k] for k in _STATE_KEYS if k in reply})
        if reply.get("result"):
            state["result"] = GradingResult.from_json(reply["result"])
        return nb, resources


# ----------------------------------------------------------------------------- command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -I -m autograder.hub.grading_service")
    parser.add_argument("action", choices=["serve", "execute"])
    parser.add_argument("--settings", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="execute: where the reply goes")
    args = parser.parse_args(argv)
    settings = HelperSettings.read(args.settings)
    os.environ.update(settings.environment)
    if args.action == "serve":
        serve(args.settings)
        return 0
    try:
        reply = execute_request(settings, sys.stdin.buffer.read(MAX_REQUEST_BYTES + 1))
    except Exception as exc:
        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    write_fresh(args.out, json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
