"""Kernels forked from a fork server (:mod:`autograder.sandbox.forkserver`) that has
imported numpy, TensorFlow and Keras once, instead of started anew: the grader's side.

One server per grading process, started at its first kernel with the kernel's environment
(secrets scrubbed, a home of its own), restarted when that environment changes (what
TensorFlow reads at import must be what the kernel would have read) or when the server
died. :func:`fork_kernel` answers None, and the kernel is started as usual, where forking
is off (``AUTOGRADER_FORK_KERNELS=off``), not possible here (no ``pidfd_open``), or the
server could not start or import (a warning says why, once). A forked kernel is sandboxed
exactly as a started one: the same launcher, namespaces, cgroups, masks and account.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from autograder._runtime import at_exit
from autograder.fstree import remove_tree
from autograder.sandbox.isolation import warn_once
from autograder.settings import FORK_KERNELS_ENV

__all__ = [
    "ForkedProcess",
    "claim_started_ahead",
    "fork_kernel",
    "fork_module",
    "fork_server_info",
    "forking_wanted",
    "hand_over_started_ahead",
    "reap_started_ahead",
    "start_servers_ahead",
    "stop_fork_server",
]

log = logging.getLogger(__name__)

_SERVER_SCRIPT = Path(__file__).with_name("forkserver.py")
_START_TIMEOUT = 180.0  # importing TensorFlow on a loaded 2-core machine
_MAX_MESSAGE = 1 << 16
# Set per kernel, not read at import: a server serves kernels that differ only in these.
PER_KERNEL = frozenset(
    {"HOME", "TMPDIR", "USER", "LOGNAME", "JPY_PARENT_PID", "JPY_SESSION_NAME", "PWD"}
)


def forking_wanted() -> bool:
    """Whether kernels are forked from a fork server here (``AUTOGRADER_FORK_KERNELS``)."""
    off = os.environ.get(FORK_KERNELS_ENV, "").strip().lower() in {"off", "0", "no", "false"}
    return sys.platform == "linux" and hasattr(os, "pidfd_open") and not off


class ForkServer:
    """A running fork server and the socket to it (one request at a time).

    Its process is watched and signalled through a pidfd, which also works in a process
    forked from the one that started it (a batch's worker that adopted a server its
    coordinator started ahead, :func:`start_servers_ahead`); only the starter reaps it."""

    def __init__(self, env: Mapping[str, str], *, wait: bool = True) -> None:
        self.key = _server_key(env)
        # 0700: the server's own home, while it imports. Named as grader_temp names its
        # folders: one left by a grader killed before its server was ready is removed by
        # the next batch (remove_stale_temps).
        self.home = Path(tempfile.mkdtemp(prefix=f"autograder-{os.getpid()}-fork-"))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        server_env = {k: v for k, v in env.items() if k not in PER_KERNEL}
        server_env.update(HOME=str(self.home), TMPDIR=str(self.home))
        self._lock = threading.Lock()
        self.sock = ours
        self.starter, self.pidfd = os.getpid(), -1
        try:
            self.process = subprocess.Popen(
                [sys.executable, str(_SERVER_SCRIPT), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=server_env,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # the grader's Ctrl-C is not for it
            )
        finally:
            theirs.close()
        self.pidfd = os.pidfd_open(self.process.pid)
        self.info: dict[str, Any] = {}
        self.ready = False  # it has said so: it has imported
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Until the server has imported and said so; OSError (the server stopped) if it
        could not."""
        self.sock.settimeout(_START_TIMEOUT)
        try:
            hello = json.loads(self.sock.recv(_MAX_MESSAGE) or b'{"error": "it exited"}')
        except (OSError, ValueError) as exc:
            hello = {"error": f"no answer: {exc}"}
        self.sock.settimeout(None)
        if "ready" not in hello:
            self.close()
            raise OSError(f"the fork server did not start: {hello.get('error')}")
        self.info, self.ready = hello["ready"], True
        remove_tree(self.home)  # read at import only (keras' config): nothing stays behind

    def alive(self) -> bool:
        return not _exited(self.pidfd, 0)

    def let_go(self) -> None:
        """Close this process's ends (its socket, its pidfd), nothing else: the server goes
        on for the process that holds them too."""
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def request(self, message: dict[str, Any], fds: tuple[int, ...] = ()) -> tuple[Any, int]:
        """Send one request; its answer and the file descriptor attached to it (or -1)."""
        data = json.dumps(message).encode()
        with self._lock:
            if fds:
                socket.send_fds(self.sock, [data], list(fds))
            else:
                self.sock.send(data)
            answer, got, _, _ = socket.recv_fds(self.sock, _MAX_MESSAGE, 1)
        if not answer:
            raise OSError("the fork server is gone")
        return json.loads(answer), (got[0] if got else -1)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()  # a ready server exits when its socket closes
        # One still importing would notice only once its imports end, and is of no use.
        if not _exited(self.pidfd, 10 if self.ready else 0):
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            _exited(self.pidfd, 10)
        if os.getpid() == self.starter:  # else its starter reaps it (reap_started_ahead)
            with contextlib.suppress(Exception):
                self.process.wait(timeout=10)
        self.let_go()
        remove_tree(self.home)


def _exited(pidfd: int, timeout: float | None) -> bool:
    """Whether the process of ``pidfd`` has ended (waiting up to ``timeout`` seconds); a
    closed one (-1) counts as ended."""
    return pidfd < 0 or bool(select.select([pidfd], [], [], timeout)[0])


def _server_key(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in env.items() if k not in PER_KERNEL))


class ForkedProcess:
    """A forked kernel's launcher, as jupyter_client's provisioner uses a ``Popen``: its
    parent is the fork server, so its exit status comes from there; signals go by pidfd
    (never to a reused process id)."""

    stdin: IO[str] | None = None
    stdout: IO[str] | None = None
    stderr: IO[str] | None = None

    def __init__(self, server: ForkServer, pid: int, pidfd: int) -> None:
        self.server, self.pid, self.pidfd = server, pid, pidfd
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and self.pidfd >= 0 and _exited(self.pidfd, 0):
            status = None
            for _ in range(50):  # the server reaps it on SIGCHLD, a moment after the exit
                try:
                    status = self.server.request({"op": "status", "pid": self.pid})[0]["status"]
                except OSError:
                    status = -signal.SIGKILL  # the server is gone, and with it the status
                if status is not None:
                    break
                time.sleep(0.02)
            self.returncode = -signal.SIGKILL if status is None else int(status)
            os.close(self.pidfd)
            self.pidfd = -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and self.pidfd >= 0 and not _exited(self.pidfd, timeout):
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
        code = self.poll()
        assert code is not None
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is None and self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def __del__(self) -> None:
        if getattr(self, "pidfd", -1) >= 0:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)


_SERVERS: list[ForkServer] = []  # at most one per process
_LOCK = threading.Lock()


def _server(env: Mapping[str, str]) -> ForkServer | None:
    with _LOCK:
        if _CLAIMED and not _SERVERS:
            _adopt(_CLAIMED.pop(), env)
        if _SERVERS and (not _SERVERS[0].alive() or _SERVERS[0].key != _server_key(env)):
            _SERVERS.pop().close()
        if not _SERVERS:
            try:
                _SERVERS.append(ForkServer(env))
            except OSError as exc:
                warn_once("fork", f"kernels are started, not forked: {exc}")
                return None
        if not _AT_EXIT:
            _AT_EXIT.append(True)
            at_exit(stop_fork_server)
        return _SERVERS[0]


_AT_EXIT: list[bool] = []


def stop_fork_server() -> None:
    """Stop this process's fork server, if it has one, and one it claimed and never used."""
    with _LOCK:
        while _SERVERS:
            _SERVERS.pop().close()
        while _CLAIMED:
            _CLAIMED.pop().close()


# Started ahead by this process (a batch's coordinator, before its own imports) for the
# workers it forks next; handed over once they are forked, reaped at the batch's end. In a
# worker: the one it claimed, until its first kernel adopts it.
_AHEAD: list[ForkServer] = []
_HANDED: list[ForkServer] = []
_CLAIMED: list[ForkServer] = []


def start_servers_ahead(env: Mapping[str, str], n: int) -> int:
    """Start ``n`` fork servers for kernels of environment ``env``, not waiting for their
    imports, for the worker processes this process forks next: each claims one
    (:func:`claim_started_ahead`) and its first kernel adopts it if that kernel's
    environment is ``env``. Returns how many were started."""
    if not forking_wanted():
        return 0
    for _ in range(n):
        try:
            _AHEAD.append(ForkServer(env, wait=False))
        except OSError as exc:
            warn_once("fork-ahead", f"no fork server started ahead: {exc}")
            break
    return len(_AHEAD)


def claim_started_ahead(index: int) -> None:
    """In a worker forked after :func:`start_servers_ahead`: keep server ``index`` for its
    first kernel, and close this process's ends of the others (the other workers')."""
    for i, server in enumerate(_AHEAD):
        if i == index:
            _CLAIMED.append(server)
        else:
            server.let_go()
    _AHEAD.clear()


def hand_over_started_ahead() -> None:
    """In the starter, once its workers are forked: its own ends closed, so that each
    server lives as long as its worker's end; the processes kept, to be reaped."""
    for server in _AHEAD:
        server.let_go()
    _HANDED.extend(_AHEAD)
    _AHEAD.clear()


def reap_started_ahead(grace: float = 5.0) -> None:
    """In the starter, once its workers have ended: each server it started ahead, which
    exits when the last end of its socket closes, waited for; killed after ``grace``
    seconds (one no worker claimed may still be importing)."""
    hand_over_started_ahead()
    deadline = time.monotonic() + grace
    for server in _HANDED:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        remove_tree(server.home)
    _HANDED.clear()


def _forget_inherited() -> None:
    """In a forked child: its parent's servers are the parent's. The child closes its
    copies of their ends, never signals them, and starts or adopts its own; the servers
    started ahead stay, for a batch's worker to claim."""
    global _LOCK
    _LOCK = threading.Lock()
    for server in (*_SERVERS, *_CLAIMED):
        server.let_go()
    _SERVERS.clear()
    _CLAIMED.clear()
    _HANDED.clear()
    _AT_EXIT.clear()


os.register_at_fork(after_in_child=_forget_inherited)


def _adopt(server: ForkServer, env: Mapping[str, str]) -> None:
    """A server started ahead, made this process's if it was started for ``env``."""
    if server.key != _server_key(env):
        ahead, here = dict(server.key), dict(_server_key(env))
        differ = sorted(k for k in ahead.keys() | here.keys() if ahead.get(k) != here.get(k))
        warn_once("fork-ahead-unfit", f"the fork server started ahead differs in {differ}")
        server.close()
        return
    try:
        server.wait_ready()
    except OSError as exc:
        warn_once("fork-ahead", f"the fork server started ahead failed: {exc}")
        return
    server.info["started_ahead"] = True
    _SERVERS.append(server)


def fork_server_info() -> dict[str, Any] | None:
    """What the running fork server reported when ready (import time, threads), or None."""
    return dict(_SERVERS[0].info) if _SERVERS else None


def fork_kernel(
    kernel_cmd: list[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    flags: tuple[str, ...],
    launch_args: list[str],
    watch: int | None,
) -> ForkedProcess | None:
    """Fork ``kernel_cmd`` (``python -m ipykernel_launcher ...`` of this interpreter) from
    the fork server, sandboxed by the launcher with ``launch_args`` after entering the
    namespaces of ``flags``; None where it cannot be forked (start it as usual)."""
    if not forking_wanted() or kernel_cmd[:3] != [sys.executable, "-m", "ipykernel_launcher"]:
        return None
    server = _server(env)
    if server is None:
        return None
    request = {
        "op": "spawn",
        "cmd": kernel_cmd,
        "env": dict(env),
        "cwd": cwd,
        "flags": list(flags),
        "args": launch_args,
    }
    try:
        answer, pidfd = server.request(request, (watch,) if watch is not None else ())
    except OSError as exc:
        warn_once("fork-failed", f"a kernel could not be forked, started instead: {exc}")
        return None
    if pidfd < 0:
        warn_once("fork-refused", f"a kernel could not be forked, started instead: {answer}")
        return None
    return ForkedProcess(server, int(answer["pid"]), pidfd)


def fork_module(module: str, args: list[str], env: Mapping[str, str]) -> ForkedProcess | None:
    """``python -m module args`` of the grader (its evaluation server), forked from this
    process's running fork server, which has imported TensorFlow already, with ``stdin``
    and ``stdout`` text pipes to it as ``Popen`` gives them; None where no server runs or
    it refused (start it as usual). ``env`` goes over the child's own pipe, never through
    the server, which kernels are forked from."""
    if not forking_wanted():
        return None
    with _LOCK:
        server = _SERVERS[0] if _SERVERS and _SERVERS[0].alive() else None
    if server is None:
        return None
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    try:
        answer, pidfd = server.request({"op": "module"}, (requests_r, replies_w))
    except OSError as exc:
        answer, pidfd = {"error": str(exc)}, -1
    finally:
        os.close(requests_r)
        os.close(replies_w)
    if pidfd < 0:
        os.close(requests_w)
        os.close(replies_r)
        warn_once("fork-module", f"{module} is started, not forked: {answer}")
        return None
    process = ForkedProcess(server, int(answer["pid"]), pidfd)
    process.stdin = os.fdopen(requests_w, "w")
    process.stdout = os.fdopen(replies_r, "r")
    setup = {"module": module, "args": args, "env": dict(env), "cwd": os.getcwd(), "path": sys.path}
    try:
        process.stdin.write(json.dumps(setup) + "\n")
        process.stdin.flush()
    except OSError as exc:  # it died at once
        process.kill()
        warn_once("fork-module", f"{module} is started, not forked: {exc}")
        return None
    return process
