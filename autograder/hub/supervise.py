"""Run one command so that stopping it stops everything it started.

JupyterHub starts its proxy, its services and every user's server in new sessions, and
stops them only if its own shutdown runs to the end; killing its process group leaves
them all running. The supervisor here is a child subreaper (``PR_SET_CHILD_SUBREAPER``):
whatever its command starts, in any session, under any account, stays a descendant of it,
and orphans are re-parented to it rather than to init. On SIGTERM, SIGINT or SIGHUP, when
its parent dies (``PR_SET_PDEATHSIG``), or when the command exits on its own, it sends the
command SIGTERM, waits up to ``--grace`` seconds for its own shutdown, then ends every
descendant still there (SIGTERM, then SIGKILL) and reaps them before it exits.

    python -m autograder.hub.supervise [--grace S] -- COMMAND [ARGS...]

Linux only (``/proc`` and ``prctl``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from autograder import procstat

__all__ = ["descendants", "end_descendants", "main"]

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def descendants(pid: int, *, living: bool = True) -> list[int]:
    """The processes under ``pid`` (children, theirs, ...); zombies left out if ``living``."""
    table = procstat.stat_table()
    return [p for p in procstat.descendants(table, pid) if not living or table[p].running]


def _reap() -> list[tuple[int, int]]:
    """Collect every child that has exited; their (pid, wait status)."""
    done: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append((pid, status))


def _signal_all(pids: Sequence[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def end_descendants(term_grace: float = 5.0, timeout: float = 60.0) -> int:
    """End every descendant of this process: SIGTERM, up to ``term_grace`` s to go, then
    SIGKILL, in rounds until none is left (a process may fork while the round runs).
    Returns how many were found. This process must be their subreaper to reap them all."""
    me, seen = os.getpid(), set[int]()
    deadline = time.monotonic() + timeout
    sig = signal.SIGTERM
    while time.monotonic() < deadline:
        left = descendants(me)
        _reap()
        if not left:
            break
        seen.update(left)
        _signal_all(left, sig)
        until = time.monotonic() + (term_grace if sig == signal.SIGTERM else 1.0)
        while time.monotonic() < until and descendants(me):
            _reap()
            time.sleep(0.05)
        sig = signal.SIGKILL
    _reap()
    return len(seen)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.hub.supervise")
    parser.add_argument("--grace", type=float, default=60.0, help="seconds the command has")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    parent = os.getppid()
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    status = 0
    child: subprocess.Popen[bytes] | None = None
    try:
        if os.getppid() != parent:
            raise _Stop(signal.SIGTERM)  # the parent died before the death signal was set
        child = subprocess.Popen(command)
        while True:
            exited = dict(_reap())
            if child.pid in exited:
                status = os.waitstatus_to_exitcode(exited[child.pid])
                child.returncode = status
                break
            time.sleep(0.2)
    except _Stop:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        if child is not None and child.returncode is None:
            child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + args.grace
            while time.monotonic() < deadline:
                exited = dict(_reap())
                if child.pid in exited:
                    child.returncode = os.waitstatus_to_exitcode(exited[child.pid])
                    break
                time.sleep(0.1)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    left = end_descendants()
    if left:
        print(f"supervise: ended {left} process(es) left by {command[0]}", file=sys.stderr)
    if child is not None and child.returncode is None:
        child.returncode = -signal.SIGKILL
    return status


if __name__ == "__main__":
    sys.exit(main())
