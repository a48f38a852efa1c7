"""Limits on a student's kernel: wall time, resident memory and network access.

One submission that hangs, eats memory or reaches out to the network must cost only its
own grade, with a reason the student can read, never the batch:

- network: the kernel runs in a network namespace of its own (``unshare``), with only a
  loopback interface that is down; its ZMQ sockets are unix sockets (``ipc``), which work
  across network namespaces where TCP on loopback would not. Where namespaces are not
  available the kernel runs as usual, and a warning says isolation is off.
- memory and whole-notebook time: a :class:`Watchdog` thread polls the kernel's process
  tree and kills all of it when its resident memory or its running time goes over.
- time per cell: nbclient's own ``timeout`` (the grader's ``GraderExecute`` sets it).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import psutil
from jupyter_client.manager import AsyncKernelManager
from traitlets import Bool

from .errors import ConfigError

__all__ = [
    "ENV_VARS",
    "LIMIT_FILE",
    "Limits",
    "SandboxedKernelManager",
    "Watchdog",
    "cell_timeout_message",
    "isolation_prefix",
    "kernel_pid",
    "read_limit",
    "write_limit",
]

log = logging.getLogger(__name__)

LIMIT_FILE = "limit.json"

# Limits field -> environment variable; the batch command sets these per run.
ENV_VARS: dict[str, str] = {
    "cell_timeout_s": "AUTOGRADER_CELL_TIMEOUT",
    "notebook_timeout_s": "AUTOGRADER_NOTEBOOK_TIMEOUT",
    "memory_mb": "AUTOGRADER_MEMORY_MB",
}


@dataclass(frozen=True)
class Limits:
    """What one notebook may use. Times in seconds, memory in MiB (kernel and children)."""

    cell_timeout_s: int = 900
    notebook_timeout_s: int = 1800
    memory_mb: int = 4096
    network: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "network" and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                raise ConfigError(f"limit {f.name} must be a positive whole number, not {value!r}")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, defaults: Limits | None = None
    ) -> Limits:
        """``defaults`` (or the built-in limits) with the ``AUTOGRADER_*`` overrides applied."""
        environ = os.environ if environ is None else environ
        changes: dict[str, Any] = {}
        for name, var in ENV_VARS.items():
            raw = environ.get(var, "").strip()
            if not raw:
                continue
            try:
                value = int(raw)
            except ValueError:
                value = 0
            if value <= 0:
                raise ConfigError(f"{var} must be a positive whole number, not {raw!r}")
            changes[name] = value
        return replace(defaults or cls(), **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cell_timeout_message(limits: Limits) -> str:
    return (
        f"time limit exceeded: this cell ran longer than {limits.cell_timeout_s} s "
        "and was interrupted"
    )


def write_limit(
    artifacts: Path,
    kind: str,
    reason: str,
    limits: Limits,
    details: Mapping[str, float] | None = None,
) -> None:
    """Record in the artifacts folder which limit stopped the notebook, and why."""
    data = {"limit": kind, "reason": reason, "limits": limits.to_dict(), **(details or {})}
    (artifacts / LIMIT_FILE).write_text(json.dumps(data, indent=1))


def read_limit(artifacts: Path) -> str | None:
    """The one-line reason recorded by :func:`write_limit`, if any."""
    try:
        data = json.loads((artifacts / LIMIT_FILE).read_text())
    except (OSError, ValueError):
        return None
    reason = data.get("reason") if isinstance(data, dict) else None
    return reason if isinstance(reason, str) and reason else None


# --- network isolation -------------------------------------------------------------------

# Tried in order. A user namespace first: inside it the kernel holds no privilege over the
# host's namespaces even when the grader runs as root, so it cannot setns() its way back.
_UNSHARE_VARIANTS: tuple[tuple[str, ...], ...] = (
    ("--user", "--map-root-user", "--net"),
    ("--net",),
)


@functools.cache
def isolation_prefix() -> tuple[str, ...] | None:
    """The command prefix that runs a program without network, or None where impossible.

    Probed once per process (a namespace that cannot be made now will not appear later).
    """
    unshare = shutil.which("unshare")
    if sys.platform != "linux" or unshare is None:
        log.warning("network isolation is off: util-linux `unshare` is not available")
        return None
    for flags in _UNSHARE_VARIANTS:
        cmd = (unshare, *flags)
        try:
            probe = subprocess.run(
                [*cmd, "--", "true"], capture_output=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return (*cmd, "--")
    log.warning(
        "network isolation is off: this machine does not allow network namespaces "
        "(`unshare --net` failed); student kernels can reach the network"
    )
    return None


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels run without network where the OS allows it.

    Async because nbgrader's Execute drives the kernel through nbclient's async API.
    """

    network = Bool(False, help="Let the kernel reach the network").tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.isolated = False  # whether the running kernel is in its own network namespace
        self._ipc_dir: str | None = None

    async def _async_pre_start_kernel(self, **kw: Any) -> tuple[list[str], dict[str, Any]]:
        prefix = None if self.network else isolation_prefix()
        if prefix is not None:
            # Private folder (mode 0700) for the sockets. A unix socket's path holds at most
            # 107 bytes: a long TMPDIR falls back to /tmp.
            if self._ipc_dir is None:
                tmp = tempfile.gettempdir()
                where = tmp if len(tmp) <= 60 or not os.path.isdir("/tmp") else "/tmp"
                self._ipc_dir = tempfile.mkdtemp(prefix="autograder-ipc-", dir=where)
            self.transport = "ipc"
            self.ip = os.path.join(self._ipc_dir, "kernel")
            self.cache_ports = False  # the port cache binds TCP ports
        kernel_cmd, kw = await super()._async_pre_start_kernel(**kw)
        self.isolated = prefix is not None
        if prefix is not None:
            kernel_cmd = [*prefix, *kernel_cmd]
        return kernel_cmd, kw

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart and self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            self._ipc_dir = None

    # AsyncKernelManager binds this public name to the base class's function, which nbclient
    # calls after a kernel died: without this, a killed kernel's socket folder stays behind.
    cleanup_resources = _async_cleanup_resources


def kernel_pid(km: Any) -> int | None:
    """The process id of a started kernel (``unshare`` execs the kernel: the same pid)."""
    pid = getattr(getattr(km, "provisioner", None), "pid", None)
    return pid if isinstance(pid, int) else None


# --- watchdog ----------------------------------------------------------------------------


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
    ) -> None:
        self.pid = pid
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
        try:
            root = psutil.Process(self.pid)
            pgid = os.getpgid(self.pid)
        except (psutil.Error, OSError):
            return
        limit_bytes = self.limits.memory_mb * 2**20
        deadline = self._started + self.limits.notebook_timeout_s
        while True:
            try:
                if not root.is_running() or root.status() == psutil.STATUS_ZOMBIE:
                    return
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            rss = sum(_rss(p) for p in procs)
            self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)
            if rss > limit_bytes:
                self._kill(
                    root,
                    pgid,
                    "memory",
                    "memory limit exceeded: the notebook used more than "
                    f"{self.limits.memory_mb} MiB",
                )
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


def _rss(p: psutil.Process) -> int:
    try:
        return int(p.memory_info().rss)
    except psutil.Error:
        return 0
