"""The watchdog: a thread that kills a kernel's whole process tree when its resident memory
or its running time goes over the notebook's limits.

It polls the kernel's process tree (``interval`` seconds), so it catches a notebook that
hoards memory or runs too long however its time is spent; the memory cgroup
(:mod:`autograder.sandbox.cgroup`), where there is one, also counts memory the tree does
not hold as resident. The kind and the reason it records are what the student reads.
Time per cell is nbclient's own ``timeout`` (``GraderExecute`` sets it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time

import psutil

from autograder.procstat import PAGE, Stat, descendants, read_stat, stat_table
from autograder.sandbox.stops import memory_limit_message
from autograder.settings import Limits

__all__ = ["Watchdog"]

log = logging.getLogger(__name__)


class Watchdog:
    """Kill a process and its descendants when they use too much memory or run too long.

    ``reason`` and ``kind`` (``"memory"`` or ``"notebook_time"``) say why, once it has.
    """

    def __init__(
        self,
        pid: int,
        limits: Limits,
        *,
        interval: float = 0.2,
        launcher_levels: int = 0,
        members: str | None = None,
    ) -> None:
        self.pid = pid
        # A cgroup's process list (``cgroup.procs``) that holds every process of the tree
        # below the launcher: then only those are read, not every process of the machine.
        self.members = members
        # The top levels of the tree that are the sandbox's launcher (`unshare` and the PID
        # namespace's init), not the notebook: their memory is not the notebook's. Forked
        # from the fork server, each holds its preloaded libraries as resident.
        self.launcher_levels = launcher_levels
        self.limits = limits
        self.interval = interval
        self.kind: str | None = None
        self.reason: str | None = None
        self.peak_rss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watchdog-{pid}", daemon=True)
        self._started = 0.0
        self._ended: float | None = None

    def start(self) -> Watchdog:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._ended is None:
            self._ended = time.monotonic()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def elapsed(self) -> float:
        """Seconds watched, up to the kill or the stop."""
        return (self._ended or time.monotonic()) - self._started

    def _run(self) -> None:
        first = read_stat(self.pid)
        try:
            # For the kill only: psutil checks that the pid is still the same process.
            root = psutil.Process(self.pid)
            pgid = os.getpgid(self.pid)
        except (psutil.Error, OSError):
            return
        if first is None:
            return
        limit_bytes = self.limits.memory_mb * 2**20
        deadline = self._started + self.limits.notebook_timeout_s
        while True:
            tree = self._tree(first.start)
            if tree is None:
                return
            launcher = {self.pid}
            for _ in range(self.launcher_levels - 1):
                launcher |= {p for p, stat in tree.items() if stat.ppid in launcher}
            rss = PAGE * sum(
                stat.rss_pages
                for p, stat in tree.items()
                if self.launcher_levels == 0 or p not in launcher
            )
            self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)
            if rss > limit_bytes:
                self._kill(root, pgid, "memory", memory_limit_message(self.limits))
                return
            if time.monotonic() >= deadline:
                self._kill(
                    root,
                    pgid,
                    "notebook_time",
                    "time limit exceeded: the notebook ran longer than "
                    f"{self.limits.notebook_timeout_s} s",
                )
                return
            if self._stop.wait(min(self.interval, max(0.0, deadline - time.monotonic()))):
                return

    def _tree(self, start: int) -> dict[int, Stat] | None:
        """The watched process and its descendants; None once it has ended (or its pid is
        another process's). With ``members``, only the cgroup's processes are read: a
        process cannot leave its cgroup, so the tree below the launcher is all in it."""
        wanted: set[int] | None = None
        if self.members is not None:
            try:
                with open(self.members) as f:
                    wanted = {self.pid, *map(int, f.read().split())}
            except (OSError, ValueError):  # the group is gone: read every process
                wanted = None
        table = stat_table(wanted)
        root = table.get(self.pid)
        if root is None or root.start != start or not root.running:
            return None
        return {self.pid: root, **{p: table[p] for p in descendants(table, self.pid)}}

    def _kill(self, root: psutil.Process, pgid: int, kind: str, reason: str) -> None:
        # Record first: whoever sees the kernel die must find the reason.
        self.kind, self.reason = kind, reason
        self._ended = time.monotonic()
        log.warning("pid %s: %s; killing its process tree", self.pid, reason)
        # Freeze the tree so nothing forks while it is listed, then kill every member.
        procs = [root]
        with contextlib.suppress(psutil.Error):
            procs += root.children(recursive=True)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.suspend()
        for p in procs:  # grows while walked: children forked before the freeze
            with contextlib.suppress(psutil.Error):
                procs.extend(c for c in p.children() if c not in procs)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        # The kernel leads its own process group (jupyter_client starts a new session):
        # this catches anything that left the tree.
        if pgid != os.getpgid(0):
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
