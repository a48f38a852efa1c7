"""A student's kernel in its sandbox: who runs it, what it can reach, how much it may use.

One submission that hangs, eats memory, forks without end, floods its output or reaches
for the network, the held-out data or other students' work must cost only its own grade,
with a reason the student can read, never the batch. :class:`KernelSandbox` puts together,
for one kernel, what the other modules of :mod:`autograder.sandbox` provide:

- user: a sandbox account of its own when the grader runs as root
  (:mod:`~autograder.sandbox.accounts`), working in a private copy of the submission's
  folder, with the public data from a read-only copy and the grader's data closed to it
  and hidden (:mod:`~autograder.sandbox.files`); the kernel's environment holds no secrets
  and, with an account, none of the grader's per-user places.
- network and processes: network, PID, mount and IPC namespaces where `unshare` allows
  them (:mod:`~autograder.sandbox.isolation`).
- resources: ``RLIMIT_NPROC`` (processes and threads; enforced for an unprivileged
  account), ``RLIMIT_FSIZE`` (largest file), ``RLIMIT_CORE`` 0, set by the launcher below;
  memory and process cgroups (:mod:`~autograder.sandbox.cgroup`); output kept per notebook
  is capped by the grader (``GraderExecute``).
- memory and whole-notebook time: :mod:`~autograder.sandbox.watchdog`; time per cell:
  nbclient's own ``timeout``. Why a notebook stopped: :mod:`~autograder.sandbox.stops`.

:class:`SandboxedKernelManager` starts a kernel in such a sandbox; :func:`kernel_pid` and
:func:`kernel_exit_status` read a started kernel's process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from traitlets import Bool

from autograder.data.loaders import data_dir, grader_only_dirs
from autograder.data.sources import raw_sources
from autograder.data.staging import staging_code
from autograder.fstree import copy_files, remove_tree
from autograder.sandbox import launcher
from autograder.sandbox.accounts import (
    acquire_slot,
    clean_account,
    kill_account_processes,
    retire,
    slot_cgroup,
    tasks_of,
)
from autograder.sandbox.cgroup import KernelCgroup
from autograder.sandbox.files import (
    EMPTY,
    KERNELS_DIR,
    chown_tree,
    close_to_others,
    public_data_copy,
    reclaim,
    short_base,
)
from autograder.sandbox.forked import fork_kernel
from autograder.sandbox.isolation import isolation_prefix, namespace_flags
from autograder.settings import DATA_DIR_ENV, Limits

__all__ = [
    "KernelSandbox",
    "SandboxedKernelManager",
    "kernel_environment",
    "kernel_exit_status",
    "kernel_pid",
]

log = logging.getLogger(__name__)


# Never handed to a student's kernel (hub tokens and the like).
_SECRET = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|ACCESS_KEY|API_KEY|PRIVATE_KEY", re.I)
_PER_USER = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR")
_PER_USER_TOOLS = ("IPYTHONDIR", "MPLCONFIGDIR", "KERAS_HOME", "JUPYTER_RUNTIME_DIR")
# Where the grader was started (often the course directory) is none of the kernel's business.
_GRADER_PLACES = ("PWD", "OLDPWD", "_")


def _scrubbed(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not (_SECRET.search(k) or k.startswith("JUPYTERHUB_"))}


# ipykernel pauses 0.5 ms before each execute reply, for clients that stop reading a cell's
# outputs at its reply; nbclient reads them until the kernel says it is idle.
_NO_REPLY_PAUSE = ("--IPythonKernel._execute_sleep", "0")

# The launcher (stdlib only) runs as `python -I -S -c SOURCE`: nothing of the course on its path.
_LAUNCH = Path(launcher.__file__).read_text()


class KernelSandbox:
    """Where, as whom and under which OS limits one kernel runs; :meth:`release` when done.

    As root: an account of its own (a slot held until released), a private folder owned by
    it (sockets, connection file, home, temp, a copy of the notebook's folder), the public
    data from a read-only copy, and the grader's held-out data closed to other accounts.
    Otherwise: the grader's user, with the same limits where the OS enforces them.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._slot = acquire_slot()
        self.account = self._slot.account if self._slot is not None else None
        self.flags = namespace_flags(network=self.limits.network, as_root=self.account is not None)
        if self.flags is None and not self.limits.network:
            isolation_prefix()  # warns once
        # As an account of its own, in the grader's place: the kernel's shared temporary
        # folders are private to it (mount namespace), so nothing of it may live there.
        base = str(KERNELS_DIR) if self.account is not None else short_base(self.separate_account)
        self.root = Path(tempfile.mkdtemp(prefix="agk-", dir=base))
        for sub in ("home", "tmp"):
            (self.root / sub).mkdir()
        self.public_data: Path | None = None
        self._granted: list[Path] = []
        self._pipes: list[int] = []  # the grader's ends of the pipes watched by the kernel's init
        self.pass_fds: tuple[int, ...] = ()  # for the launch of the kernel (Popen)
        self._released = False
        self.cgroup: KernelCgroup | None = None
        self.oom_killed = False  # the memory cgroup's OOM killer ended something of it
        self.peak_memory_mb: float | None = None
        self.forked = False  # forked from the fork server (:mod:`forked`), not started
        if self.account is not None:
            self.public_data = public_data_copy()
            close_to_others(grader_only_dirs())
            chown_tree(self.root, self.account.uid, self.account.gid)
            assert self._slot is not None
            self.cgroup = KernelCgroup.create(
                f"{slot_cgroup(self._slot.number)}{self.root.name}",
                memory_mb=self.limits.memory_mb,
                processes=self.limits.processes,
            )

    @property
    def separate_account(self) -> bool:
        """Whether the kernel runs as another account than the grader."""
        return self.account is not None

    @property
    def network_isolated(self) -> bool:
        return self.flags is not None and "--net" in self.flags

    @property
    def pid_namespace(self) -> bool:
        return self.flags is not None and "--pid" in self.flags

    @property
    def private_tmp(self) -> bool:
        """Whether the kernel gets its own /tmp, /var/tmp, /dev/shm and /run/lock (one
        tmpfs of at most ``memory_mb``, gone with the kernel's mount namespace)."""
        return self.account is not None and self.flags is not None and "--mount" in self.flags

    def _hidden(self) -> list[Path]:
        """What the kernel's mount namespace hides: the grader's staged data (held-out
        included; the kernel reads a copy of ``public/``) and every raw source the data
        sets were staged from, which hold the held-out examples too."""
        EMPTY.touch(mode=0o000, exist_ok=True)
        EMPTY.chmod(0o000)
        return [data_dir(), *raw_sources(), *staging_code()]

    def memory_stop(self) -> bool:
        """Whether the memory cgroup stopped the kernel (its OOM killer ended a process)."""
        if self.cgroup is not None and self.cgroup.oom_kills() > 0:
            self.oom_killed = True
        return self.oom_killed

    def grant(self, path: Path) -> None:
        """Let the kernel write into ``path`` (a folder of the grader's); reclaimed on release."""
        if self.account is not None:
            chown_tree(path, self.account.uid, self.account.gid)
            path.chmod(0o700)
        self._granted.append(path)

    def workdir(self, cwd: str | os.PathLike[str] | None) -> str | None:
        """The kernel's working folder: with an account, a private copy of the regular files
        directly in ``cwd`` (the notebook and the files submitted beside it; no folders, no
        links, nothing else of the course); else ``cwd`` itself."""
        work = self.root / "work"
        if self.account is None or (cwd is not None and Path(cwd) == work):
            return None if cwd is None else str(cwd)
        work.mkdir(mode=0o700)
        if cwd is not None and Path(cwd).is_dir():
            copy_files(Path(cwd), work)
        chown_tree(work, self.account.uid, self.account.gid)
        return str(work)

    def empty_workdir(self) -> Path:
        """The working folder of a kernel started before its notebook is known; the
        notebook's files come with :meth:`fill_workdir`."""
        work = self.root / "work"
        work.mkdir(mode=0o700)
        if self.account is not None:
            os.chown(work, self.account.uid, self.account.gid)
        return work

    def fill_workdir(self, source: Path) -> None:
        """Copy the regular files of the notebook's folder into the (empty) working folder
        of a started kernel."""
        work = self.root / "work"
        copy_files(source, work)
        if self.account is not None:
            chown_tree(work, self.account.uid, self.account.gid)

    def own(self, path: Path) -> None:
        """Hand a file the grader wrote for the kernel (its connection file) to the kernel."""
        if self.account is not None:
            os.lchown(path, self.account.uid, self.account.gid)

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        env = _scrubbed(env)
        if self.account is not None:
            for name in (*_PER_USER, *_PER_USER_TOOLS, *_GRADER_PLACES):
                env.pop(name, None)
            home = str(self.root / "home")
            env.update(
                HOME=home,
                TMPDIR=str(self.root / "tmp"),
                USER=self.account.name,
                LOGNAME=self.account.name,
            )
            if self.public_data is not None:
                env[DATA_DIR_ENV] = str(self.public_data)
        return env

    def _nproc(self) -> str:
        if self.account is not None:
            return str(self.limits.processes)
        if os.geteuid() == 0:
            return "-"  # not enforced for root: leave it
        # Counted per user: the grader's own processes and threads count too.
        return str(tasks_of(os.getuid()) + self.limits.processes)

    def launch_args(self, kernel_cmd: list[str]) -> list[str]:
        """The launcher's arguments for ``kernel_cmd`` in this sandbox (:mod:`launcher`);
        with a PID namespace, the read end of a new watch pipe is in :attr:`pass_fds`."""
        watch = "-"
        if self.pid_namespace:
            read, write = os.pipe()
            self._pipes += [read, write]
            self.pass_fds = (read,)
            watch = str(read)
        acct = self.account
        return [
            self._nproc(),
            str(self.limits.file_size_mb * 2**20),
            str(acct.uid) if acct else "-",
            str(acct.gid) if acct else "-",
            watch,
            # memory-backed: at most the memory limit (counted in it too, with a cgroup)
            str(self.limits.memory_mb) if self.private_tmp else "-",
            ",".join(self.cgroup.procs_files) if self.cgroup is not None else "-",
            json.dumps([str(p) for p in self._hidden()]) if self.private_tmp else "-",
            str(EMPTY),
            "--",
            *kernel_cmd,
        ]

    def command(self, launch_args: list[str]) -> list[str]:
        """The command that starts the kernel of :meth:`launch_args` in this sandbox;
        launch it with :attr:`pass_fds`."""
        prefix: list[str] = []
        if self.flags is not None:
            unshare = shutil.which("unshare")
            assert unshare is not None
            prefix = [unshare, *self.flags, "--"]
        return [*prefix, sys.executable, "-I", "-S", "-c", _LAUNCH, *launch_args]

    def describe(self) -> dict[str, Any]:
        """What held for this kernel, for the record."""
        acct = self.account
        return {
            "user": acct.name if acct else pwd.getpwuid(os.geteuid()).pw_name,
            "separate_user": acct is not None,
            "network_namespace": self.network_isolated,
            "pid_namespace": self.pid_namespace,
            "private_tmp": self.private_tmp,
            "memory_cgroup": self.cgroup is not None,
            "cpu_cgroup": self.cgroup is not None and self.cgroup.cpu,
            "processes": self.limits.processes if acct or os.geteuid() != 0 else None,
            "file_size_mb": self.limits.file_size_mb,
            "forked": self.forked,
        }

    def release(self) -> None:
        """Kill whatever the kernel's account still runs, give granted folders back to the
        grader, remove the private folder and free the account for the next kernel. Each
        step is best-effort and none raises: an account whose clean-up fails is retired."""
        if self._released:
            return
        self._released = True
        problems: list[str] = []
        cleaned = False  # the account, killed, waited for and its files removed

        def step(what: str, fn: Any, *args: Any) -> None:
            try:
                if fn(*args) is False:
                    problems.append(what)
            except Exception as exc:  # one notebook's mess must not fail the worker
                problems.append(f"{what}: {type(exc).__name__}: {exc}")

        try:
            if self.account is not None:
                step("killing the account's processes", kill_account_processes, self.account)
            killed = not problems
            for fd in self._pipes:  # the kernel's init, if still there, ends everything
                with contextlib.suppress(OSError):
                    os.close(fd)
            if self.cgroup is not None:
                self.memory_stop()
                self.peak_memory_mb = self.cgroup.peak_mb()
                step("removing the kernel's cgroups", self.cgroup.remove)
            for path in self._granted:  # back to the grader first: then nothing is left to
                step(f"reclaiming {path}", reclaim, path)  # the account but its own files
            step("removing the kernel's folder", remove_tree, self.root)
            if self.account is not None and self._slot is not None:
                number = self._slot.number
                step(
                    "cleaning the account",
                    lambda a: clean_account(a, number, killed=killed) is None,
                    self.account,
                )
                cleaned = not problems
            if problems:
                log.warning("cleaning up after a kernel: %s", "; ".join(problems))
        finally:
            if self._slot is not None:
                if problems and self.account is not None:
                    retire(self._slot.number, "; ".join(problems))
                self._slot.release(clean=cleaned)


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels run in a :class:`KernelSandbox`.

    ``sandbox`` (set by ``GraderExecute``, which releases it) or, when unset, one of its
    own made at start and released at cleanup. Async because nbgrader's Execute drives the
    kernel through nbclient's async API.
    """

    network = Bool(False, help="Let the kernel reach the network").tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.isolated = False  # whether the running kernel is in its own network namespace
        self.limits: Limits | None = None
        self.sandbox: KernelSandbox | None = None
        self._own_sandbox = False
        self._launch: tuple[list[str], list[str]] | None = None  # kernel_cmd, launcher's args
        self.forked = False  # whether the running kernel was forked from the fork server

    async def _async_pre_start_kernel(self, **kw: Any) -> tuple[list[str], dict[str, Any]]:
        if self.sandbox is None:
            self.sandbox = KernelSandbox(replace(self.limits or Limits(), network=self.network))
            self._own_sandbox = True
        box = self.sandbox
        if box.network_isolated:
            self.transport = "ipc"
            self.ip = str(box.root / "kernel")
            self.cache_ports = False  # the port cache binds TCP ports
        # In the private folder: the kernel's account can read it, nobody else can.
        self.connection_file = str(box.root / "kernel.json")
        kw["cwd"] = box.workdir(kw.get("cwd"))
        kernel_cmd, kw = await super()._async_pre_start_kernel(**kw)
        if self.ipykernel and not any(a.startswith(_NO_REPLY_PAUSE[0]) for a in kernel_cmd):
            kernel_cmd = [*kernel_cmd, "=".join(_NO_REPLY_PAUSE)]
        box.own(Path(self.connection_file))
        kw["env"] = box.environment(kw.get("env") or os.environ)
        self.isolated = box.network_isolated
        self._launch = (kernel_cmd, box.launch_args(kernel_cmd))
        cmd = box.command(self._launch[1])
        # What a kernel prints outside cells (ipykernel's banner, TensorFlow's start-up log)
        # would flood the grader's terminal; what a cell prints comes over the iopub channel.
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        if box.pass_fds:
            kw["pass_fds"] = box.pass_fds  # Popen keyword, passed on by jupyter_client
        return cmd, kw

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        """Fork the kernel from the fork server when it can be (:mod:`forked`), else start
        it (``kernel_cmd``: the whole sandboxed command)."""
        box, launch = self.sandbox, self._launch
        self.forked = False
        if box is not None and launch is not None and self.provisioner is not None:
            env = kw.get("env") or os.environ
            process = fork_kernel(
                launch[0],
                env=env,
                cwd=str(kw.get("cwd") or os.getcwd()),
                flags=box.flags or (),
                launch_args=launch[1],
                watch=box.pass_fds[0] if box.pass_fds else None,
            )
            if process is not None:
                # What LocalProvisioner.launch_kernel records of a process it started.
                provisioner: Any = self.provisioner
                provisioner.process = process
                provisioner.pid = process.pid
                provisioner.pgid = process.pid  # a session of its own
                provisioner.cwd = kw.get("cwd")
                self.forked = box.forked = True
                self._reconcile_connection_info(provisioner.connection_info)
                return
        await super()._async_launch_kernel(kernel_cmd, **kw)

    async def _async_wait(self, pollinterval: float = 0.1) -> None:
        # A killed kernel is gone within milliseconds: jupyter_client's tenth-of-a-second
        # poll would add most of a tenth to every notebook a worker grades.
        await super()._async_wait(pollinterval=min(pollinterval, 0.005))

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart and self._own_sandbox and self.sandbox is not None:
            self.sandbox.release()
            self.sandbox = None
            self._own_sandbox = False

    # AsyncKernelManager binds this public name to the base class's function, which nbclient
    # calls after a kernel died: without this, a killed kernel's folder stays behind.
    cleanup_resources = _async_cleanup_resources


def kernel_pid(km: Any) -> int | None:
    """The process id of a started kernel's launcher: the kernel itself, or with a PID
    namespace the ``unshare`` process whose child it is (the watchdog watches the tree)."""
    pid = getattr(getattr(km, "provisioner", None), "pid", None)
    return pid if isinstance(pid, int) else None


def kernel_exit_status(km: Any) -> int | None:
    """The exit status of a kernel that has ended (negative: killed by that signal)."""
    process = getattr(getattr(km, "provisioner", None), "process", None)
    if process is None:
        return None
    with contextlib.suppress(Exception):
        status = process.poll()
        return status if isinstance(status, int) else None
    return None


def kernel_environment(limits: Limits | None = None) -> dict[str, str]:
    """The environment a notebook's kernel started by this process now would get, as its
    manager's own start-up steps make it, in a sandbox taken and released (no kernel is
    started): what a fork server started ahead of that kernel is started with.

    On an event loop of its own, closed afterwards: a batch's coordinator calls this just
    before forking its workers, which would otherwise inherit the loop jupyter_core keeps
    per thread, and with it one epoll instance shared among processes."""
    import asyncio

    limits = limits or Limits()
    km = SandboxedKernelManager()
    km.network, km.limits = limits.network, limits
    km.sandbox = box = KernelSandbox(limits)
    loop = asyncio.new_event_loop()
    try:
        _, kw = loop.run_until_complete(km._async_pre_start_kernel(cwd=str(box.empty_workdir())))
        return dict(kw.get("env") or {})
    finally:
        if km.provisioner is not None:
            with contextlib.suppress(Exception):  # its ports back to the port cache
                loop.run_until_complete(km.provisioner.cleanup(restart=False))
        loop.close()
        with contextlib.suppress(Exception):
            km.cleanup_connection_file()
        box.release()
