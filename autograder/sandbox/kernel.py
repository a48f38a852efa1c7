"""Limits on a student's kernel: who runs it, what it can reach, how much it may use.

One submission that hangs, eats memory, forks without end, floods its output or reaches
for the network, the held-out data or other students' work must cost only its own grade,
with a reason the student can read, never the batch:

- user: when the grader runs as root, the kernel runs as an unprivileged account of its own
  (``autograder-sandbox-<n>``, created on first use, one per kernel running at the same
  time), with no supplementary groups and ``no_new_privs``. It works in a private copy of
  the submission's folder and reads the public data from a read-only copy; the held-out
  data, the course directory and the other kernels' folders are closed to it. Without root
  the kernel runs as the grader's own user (a warning says so).
- resources: ``RLIMIT_NPROC`` (processes and threads; enforced for an unprivileged
  account), ``RLIMIT_FSIZE`` (largest file), ``RLIMIT_CORE`` 0; output kept per notebook is
  capped by the grader (``GraderExecute``).
- network and processes: a network namespace (``unshare``) with only a loopback that is
  down, and a PID namespace, so that everything the notebook starts dies with its kernel.
  The kernel's ZMQ sockets are unix sockets (``ipc``), which work across network
  namespaces. Where namespaces are not available the kernel runs as usual, and a warning
  says that isolation is off.
- memory and whole-notebook time: a :class:`Watchdog` thread polls the kernel's process
  tree and kills all of it when its resident memory or its running time goes over.
- time per cell: nbclient's own ``timeout`` (the grader's ``GraderExecute`` sets it).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import psutil
from jupyter_client.manager import AsyncKernelManager
from traitlets import Bool

from autograder._runtime import at_exit
from autograder.data.loaders import data_dir, grader_only_dirs
from autograder.data.staging import raw_sources, staging_code
from autograder.errors import ConfigError
from autograder.fstree import copy_files, remove_tree, walk_tree, write_fresh
from autograder.sandbox.cgroup import KernelCgroup
from autograder.settings import SANDBOX_USER_ENV, Limits

__all__ = [
    "ACCOUNT_PREFIX",
    "EVALUATOR_ACCOUNT",
    "LIMIT_FILE",
    "KernelSandbox",
    "SandboxedKernelManager",
    "Watchdog",
    "cell_timeout_message",
    "close_to_others",
    "death_reason",
    "grader_temp",
    "grader_work_dir",
    "isolation_prefix",
    "kernel_exit_status",
    "kernel_pid",
    "memory_limit_message",
    "output_limit_message",
    "read_limit",
    "remove_stale_temps",
    "start_spare_kernel",
    "take_spare_kernel",
    "write_limit",
]

log = logging.getLogger(__name__)

LIMIT_FILE = "limit.json"


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
    write_fresh(artifacts / LIMIT_FILE, json.dumps(data, indent=1))


def memory_limit_message(limits: Limits) -> str:
    return f"memory limit exceeded: the notebook used more than {limits.memory_mb} MiB"


def output_limit_message(limits: Limits) -> str:
    return (
        f"output limit exceeded: the notebook printed more than {limits.output_mb} MiB; "
        "the rest of its output was dropped"
    )


def read_limit(artifacts: Path) -> str | None:
    """The one-line reason recorded by :func:`write_limit`, if any."""
    try:
        data = json.loads((artifacts / LIMIT_FILE).read_text())
    except (OSError, ValueError):
        return None
    reason = data.get("reason") if isinstance(data, dict) else None
    return reason if isinstance(reason, str) and reason else None


# --- namespaces ------------------------------------------------------------------------------

# Tried in order, each with `unshare ... -- true` once per process. `--pid --fork` puts the
# kernel (as PID 1) and everything it starts in a PID namespace: when the kernel dies, the
# system kills and reaps every process left in it, however it was started.
_PID = ("--pid", "--fork", "--kill-child")
# As root, switching to a sandbox account after unshare: no user namespace (one that maps
# only root would leave the account's uid unmapped). A mount namespace (private propagation,
# util-linux's default) for the kernel's own /tmp, /var/tmp, /dev/shm and /run/lock, and an
# IPC namespace: what a notebook leaves in them goes with its last process.
_PRIVATE = ("--mount", "--ipc")
_AS_ROOT_NO_NETWORK = (("--net", *_PRIVATE, *_PID), ("--net", *_PID), ("--net",))
_AS_ROOT_NETWORK = ((*_PRIVATE, *_PID), (*_PID,))
# Otherwise a user namespace first: inside it the kernel holds no privilege over the host's
# namespaces even when the grader runs as root, so it cannot setns() its way back.
_USER = ("--user", "--map-root-user")
_NO_NETWORK = ((*_USER, "--net", *_PID), (*_USER, "--net"), ("--net", *_PID), ("--net",))
_NETWORK = ((*_USER, *_PID), (*_PID,))


@functools.cache
def _unshare_flags(candidates: tuple[tuple[str, ...], ...]) -> tuple[str, ...] | None:
    """The first of ``candidates`` that `unshare` accepts here (probed once per process)."""
    unshare = shutil.which("unshare")
    if sys.platform != "linux" or unshare is None:
        return None
    for flags in candidates:
        try:
            probe = subprocess.run(
                [unshare, *flags, "--", "true"], capture_output=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return flags
    return None


def _namespace_flags(*, network: bool, as_root: bool) -> tuple[str, ...] | None:
    if as_root:
        return _unshare_flags(_AS_ROOT_NETWORK if network else _AS_ROOT_NO_NETWORK)
    return _unshare_flags(_NETWORK if network else _NO_NETWORK)


def isolation_prefix() -> tuple[str, ...] | None:
    """The command prefix that runs a kernel without network here, or None where impossible."""
    as_root = _accounts_wanted()
    flags = _namespace_flags(network=False, as_root=as_root)
    if flags is None:
        _warn_once(
            "network",
            "network isolation is off: util-linux `unshare --net` is not available or not "
            "allowed here; student kernels can reach the network",
        )
        return None
    unshare = shutil.which("unshare")
    assert unshare is not None
    return (unshare, *flags, "--")


_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


# --- sandbox accounts ------------------------------------------------------------------------

ACCOUNT_PREFIX = "autograder-sandbox-"
# The grader's own places, outside every shared temporary folder (a kernel gets private
# ones): slot n (account ACCOUNT_PREFIX + n) is held by whoever holds the lock on
# slots/slot-<n>.lock, so two kernels never share an account; slots/slot-<n>.retired marks
# an account whose clean-up failed, never used again. kernels/ holds each kernel's private
# folder (its own, 0700) and work/ the grader's folders handed to a kernel (the capture's).
_SANDBOX_DIR = Path("/run/autograder-sandbox")
_SLOT_DIR = _SANDBOX_DIR / "slots"
_KERNELS_DIR = _SANDBOX_DIR / "kernels"
_WORK_DIR = _SANDBOX_DIR / "work"
_EMPTY = _SANDBOX_DIR / "hidden"  # bound over each file the kernel must not read


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


class _Slot:
    def __init__(self, account: Account, lock: IO[str], number: int) -> None:
        self.account = account
        self.number = number
        self._lock: IO[str] | None = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # drops the flock
            self._lock = None


def _accounts_wanted() -> bool:
    off = os.environ.get(SANDBOX_USER_ENV, "").strip().lower() in {"off", "0", "no", "false"}
    return sys.platform == "linux" and os.geteuid() == 0 and not off and "accounts" not in _BROKEN


_BROKEN: dict[str, str] = {}  # "accounts" -> why sandbox accounts cannot be used here


def _ensure_account(name: str) -> Account:
    """The system account ``name`` (no home, no login shell), created when missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        cmd = [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent"]
        proc = subprocess.run(
            [*cmd, "--shell", "/usr/sbin/nologin", "--user-group", name],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            entry = pwd.getpwnam(name)  # also when another grader created it meanwhile
        except KeyError:
            raise ConfigError(
                f"cannot create the sandbox account {name}: "
                f"{proc.stderr.strip() or f'useradd exit {proc.returncode}'}"
            ) from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise ConfigError(f"the sandbox account {name} must not be root")
    return Account(name, entry.pw_uid, entry.pw_gid)


@functools.cache
def _account_can_run_python(uid: int, gid: int) -> str | None:
    """None when the account can start this Python and import the kernel and the grader's
    package (a venv or checkout under /root, mode 0700, would stop it), else why not."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "import ipykernel, autograder.data.loaders"],
            user=uid,
            group=gid,
            extra_groups=[],
            cwd="/",
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"]
        return lines[-1][:300]
    return None


EVALUATOR_ACCOUNT = "autograder-evaluator"


def evaluator_account() -> Account | None:
    """The account the evaluation of a saved model runs as (``grading.evaluation_server``), or
    None where the grader does not switch accounts (not root, accounts turned off, or
    this Python cannot be used by other accounts: then it evaluates as itself)."""
    if not _accounts_wanted():
        return None
    try:
        account = _ensure_account(EVALUATOR_ACCOUNT)
    except ConfigError as exc:
        _warn_once("evaluator", f"evaluations run as the grader: {exc}")
        return None
    why = _account_can_run_python(account.uid, account.gid)
    if why is not None:
        _warn_once("evaluator", f"evaluations run as the grader: {account.name} cannot: {why}")
        return None
    return account


def _sandbox_dirs() -> None:
    """The grader's folders: only root may list them; accounts may pass through to their
    own folder inside ``kernels/`` and ``work/``."""
    _SANDBOX_DIR.mkdir(mode=0o711, exist_ok=True)
    _SLOT_DIR.mkdir(mode=0o700, exist_ok=True)
    for folder, mode in ((_SANDBOX_DIR, 0o711), (_KERNELS_DIR, 0o711), (_WORK_DIR, 0o711)):
        folder.mkdir(mode=mode, exist_ok=True)
        st = folder.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ConfigError(f"{folder} is not the grader's own folder")
        folder.chmod(mode)


def grader_work_dir() -> str:
    """Where the grader makes folders it hands to a kernel (the capture's): its own place
    when kernels run as sandbox accounts (they get private temporary folders, so the
    shared ones are not theirs to see), else the usual temporary folder."""
    if _accounts_wanted():
        with contextlib.suppress(OSError, ConfigError):
            _sandbox_dirs()
            return str(_WORK_DIR)
    return tempfile.gettempdir()


def grader_temp(kind: str) -> Path:
    """A new folder of the grader's (0700) for one submission's files: capture, copies,
    evaluation. Its name carries this process's pid, so that one left by a grader that was
    killed can be told from one in use (:func:`remove_stale_temps`)."""
    prefix = f"autograder-{os.getpid()}-{kind}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=grader_work_dir()))


def remove_stale_temps() -> None:
    """Remove the folders of :func:`grader_temp`, and public data copies, whose grader is
    gone (killed mid-batch)."""
    _remove_stale_public_copies(grader_work_dir())
    shared = tempfile.gettempdir()
    for base in {grader_work_dir(), shared}:
        for path in Path(base).glob("autograder-[0-9]*-*"):
            pid = path.name.split("-")[1]
            with contextlib.suppress(OSError, ValueError):
                # In the grader's own folder everything is the grader's (a capture folder
                # may still belong to the kernel's account); in /tmp only what it owns.
                mine = base != shared or path.stat().st_uid == os.geteuid()
                if mine and not psutil.pid_exists(int(pid)):
                    remove_tree(path)


def _retire(n: int, why: str) -> None:
    log.warning("sandbox slot %d retired, never used again: %s", n, why)
    with contextlib.suppress(OSError):
        (_SLOT_DIR / f"slot-{n}.retired").write_text(why + "\n")


def _slot_cgroup(n: int) -> str:
    """The start of the names of slot ``n``'s kernel cgroups."""
    return f"slot{n}-"


def _clean_account(account: Account, slot: int) -> str | None:
    """Kill the account's processes and remove its files and its slot's cgroups (all of
    them left by a grader that was killed); why not, if something stays."""
    _kill_account_processes(account)
    if not KernelCgroup.remove_stale(_slot_cgroup(slot)):
        return f"cgroups of slot {slot} could not be removed"
    if not _remove_account_files(account):
        return f"files of {account.name} could not be removed"
    deadline = time.monotonic() + 5
    while _running(account.uid):
        if time.monotonic() > deadline:
            return f"processes of {account.name} are still running"
        time.sleep(0.05)
    return None


def _acquire_slot() -> _Slot | None:
    """A sandbox account of our own (locked until released), or None where there is none."""
    if not _accounts_wanted():
        return None
    try:
        _sandbox_dirs()
        for n in range(4096):
            if (_SLOT_DIR / f"slot-{n}.retired").exists():
                continue
            lock = (_SLOT_DIR / f"slot-{n}.lock").open("a+")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            try:
                account = _ensure_account(f"{ACCOUNT_PREFIX}{n}")
            except Exception:
                lock.close()
                raise
            why = _account_can_run_python(account.uid, account.gid)
            if why is not None:
                lock.close()
                raise ConfigError(
                    f"the sandbox account {account.name} cannot run {sys.executable} with "
                    f"the grader's packages ({why}); install the venv where other accounts "
                    "can read it (e.g. on Debian's /usr/bin/python3.11, outside /root)"
                )
            # Anything a grader killed mid-run left behind: processes, and files (a copy of
            # a submission, say) that the next kernel on this account could read.
            left = _clean_account(account, n)
            if left is not None:
                _retire(n, left)
                lock.close()
                continue
            return _Slot(account, lock, n)
        raise ConfigError(f"no free sandbox slot in {_SLOT_DIR}")
    except (OSError, ConfigError) as exc:
        _BROKEN["accounts"] = str(exc)
        log.warning(
            "student kernels run as the grader's own user (root): %s. Without a separate "
            "account the kernel can read whatever the grader can, and the process limit "
            "is not enforced",
            exc,
        )
        return None


_KILL_ALL = (
    "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError:\n    pass"
)


def _kill_account_processes(account: Account) -> None:
    """SIGKILL every process of the account: ``kill(-1)`` sent as the account itself reaches
    all of them at once, so a fork bomb cannot outrun it."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [sys.executable, "-I", "-S", "-c", _KILL_ALL],
            user=account.uid,
            group=account.gid,
            extra_groups=[],
            cwd="/",
            env={},
            capture_output=True,
            timeout=30,
            check=False,
        )


def _remove_account_files(account: Account) -> bool:
    """Remove what the account owns in the shared temporary folders: the next kernel to
    get the account must not find it. Whatever shape a notebook gave it (a tree deeper than
    the recursion limit, links, fifos) is removed without following links; False if
    anything of the account's is left."""
    ok = True
    shared = {"/tmp", "/var/tmp", "/dev/shm", "/run/lock", tempfile.gettempdir()}
    for base in shared | {str(_KERNELS_DIR), str(_WORK_DIR)}:
        try:
            entries = list(os.scandir(base))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != account.uid:
                    continue
            except OSError:
                continue
            ok = remove_tree(entry.path) and ok
    return ok


# --- what the kernel may read --------------------------------------------------------------


def _open_to_others(path: Path) -> bool:
    """Whether an unrelated account can reach ``path``: every folder on the way enterable
    by others, and ``path`` itself with any permission for others."""
    try:
        resolved = path.resolve()
        for parent in reversed(resolved.parents):
            if not parent.stat().st_mode & stat.S_IXOTH:
                return False
        return bool(resolved.stat().st_mode & 0o007)
    except OSError:
        return False


def close_to_others(paths: Iterable[Path]) -> list[Path]:
    """Remove the permissions for others from each path that other accounts could reach
    (owner and group keep theirs); return the paths changed."""
    changed = []
    for path in paths:
        if path.exists() and _open_to_others(path):
            mode = stat.S_IMODE(path.stat().st_mode)
            path.chmod(mode & ~0o007)
            changed.append(path)
            log.warning("closed %s to other accounts (was mode %o)", path, mode)
    return changed


def _traversable(path: Path) -> bool:
    try:
        return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])
    except OSError:
        return False


def _short_base(shared: bool) -> str:
    """Where the kernel's private folder goes: a unix socket's path holds at most 107 bytes,
    and an account of its own must be able to enter every folder on the way."""
    tmp = tempfile.gettempdir()
    ok = len(tmp) <= 60 and (not shared or _traversable(Path(tmp)))
    return tmp if ok or not os.path.isdir("/tmp") else "/tmp"


_PUBLIC: dict[str, Path] = {}


def _public_data_copy() -> Path | None:
    """A read-only, world-readable copy of the staged ``public/`` data (never ``heldout/``)
    for kernels that run as a sandbox account; made once per process and data version."""
    from autograder.data.loaders import data_dir

    source = data_dir() / "public"
    manifest = source / "manifest.json"
    if not manifest.is_file():
        return None
    key = f"{source}:{manifest.stat().st_mtime_ns}"
    copy = _PUBLIC.get(key)
    if copy is not None and (copy / "public" / "manifest.json").is_file():
        return copy
    base = grader_work_dir()
    _remove_stale_public_copies(base)
    copy = Path(tempfile.mkdtemp(prefix=f"{_PUBLIC_PREFIX}{os.getpid()}-", dir=base))
    shutil.copytree(source, copy / "public")
    for path in [*(copy / "public").rglob("*"), copy / "public"]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    copy.chmod(0o755)
    _PUBLIC[key] = copy
    at_exit(functools.partial(remove_tree, copy))
    return copy


_PUBLIC_PREFIX = "autograder-public-"


def _remove_stale_public_copies(base: str) -> None:
    """Copies left by graders that were killed (their pid, in the name, is gone)."""
    for path in Path(base).glob(f"{_PUBLIC_PREFIX}*-*"):
        pid = path.name[len(_PUBLIC_PREFIX) :].split("-", 1)[0]
        with contextlib.suppress(OSError, ValueError):
            if path.stat().st_uid == os.geteuid() and not psutil.pid_exists(int(pid)):
                remove_tree(path)


# Never handed to a student's kernel (hub tokens and the like).
_SECRET = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|ACCESS_KEY|API_KEY|PRIVATE_KEY", re.I)
_PER_USER = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR")
_PER_USER_TOOLS = ("IPYTHONDIR", "MPLCONFIGDIR", "KERAS_HOME", "JUPYTER_RUNTIME_DIR")
# Where the grader was started (often the course directory) is none of the kernel's business.
_GRADER_PLACES = ("PWD", "OLDPWD", "_")


def _scrubbed(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not (_SECRET.search(k) or k.startswith("JUPYTERHUB_"))}


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.lchown(path, uid, gid)
    walk_tree(path, lambda p, st: os.lchown(p, uid, gid))


def _reclaim(path: Path) -> bool:
    """Give a folder the kernel wrote back to the grader: links and special files removed,
    everything else owned by the grader and private to it. Run once the kernel's processes
    are gone, so nothing can change it afterwards. False if something could not be."""
    if not path.is_dir() or path.is_symlink():
        return True
    uid, gid = os.geteuid(), os.getegid()

    failed: list[str] = []

    def visit(p: str, st: os.stat_result) -> None:
        try:
            if stat.S_ISDIR(st.st_mode):
                os.lchown(p, uid, gid)
                os.chmod(p, 0o700)
            elif stat.S_ISREG(st.st_mode):
                os.lchown(p, uid, gid)
                os.chmod(p, 0o600)
            else:  # a symlink (to the held-out data, say) or a fifo: never to be followed
                os.unlink(p)
        except OSError:
            failed.append(p)

    try:
        os.lchown(path, uid, gid)
        path.chmod(0o700)
        return walk_tree(path, visit) and not failed
    except OSError as exc:
        log.warning("reclaiming %s: %s", path, exc)
        return False


def _running(uid: int) -> int:
    """Processes of ``uid`` that are not zombies."""
    count = 0
    for p in psutil.process_iter(["uids", "status"]):
        with contextlib.suppress(psutil.Error, TypeError, AttributeError):
            if p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE:
                count += 1
    return count


def _tasks_of(uid: int) -> int:
    total = 0
    for p in psutil.process_iter(["uids", "num_threads"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if p.info["uids"].real == uid:
                total += int(p.info["num_threads"] or 1)
    return total


# Run between unshare and the kernel (stdlib only, `python -I -S`): as root, join the kernel's
# cgroups and mount its private temporary folders (size-capped tmpfs); resource limits, then the
# account (groups, gid, uid: all of them, real, effective and saved), then no_new_privs so
# that no setuid program can give privileges back. Without a PID namespace it then becomes
# the kernel (whose parent, the grader, ipykernel watches). In a PID namespace it stays as
# the namespace's init (PID 1): it starts the kernel, reaps whatever is orphaned (killed
# processes must not linger as zombies: they count against the account's process limit),
# and ends everything when the kernel ends or when the grader is gone (the grader holds the
# write end of the pipe WATCH: when it dies the pipe reads as closed). It exits with the
# kernel's exit code, 128 + N for a kernel killed by signal N.
_LAUNCH = r"""
import ctypes, json, os, resource, select, signal, sys
nproc, fsize, uid, gid, watch, tmpfs, cgroups, masks, empty = sys.argv[1:10]
cmd = sys.argv[11:]
libc = ctypes.CDLL(None, use_errno=True)
if cgroups != "-":  # join the kernel's memory and pids groups while still root
    for procs in cgroups.split(","):
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
if masks != "-":  # in the kernel's own mount namespace: the grader's data, hidden
    for path in json.loads(masks):
        if os.path.isdir(path) and not os.path.islink(path):  # an empty, read-only folder
            done = libc.mount(b"tmpfs", path.encode(), b"tmpfs", 1 | 2 | 4 | 8, b"size=4k,mode=000")
        elif os.path.isfile(path) and not os.path.islink(path):  # an unreadable empty file
            done = libc.mount(empty.encode(), path.encode(), None, 4096, None)
        else:
            continue
        if done != 0:
            raise OSError(ctypes.get_errno(), "hiding " + path)
if tmpfs != "-":  # in the kernel's own mount namespace: one tmpfs (MS_NOSUID | MS_NODEV)
    options = ("size=%sm,mode=1777" % tmpfs).encode()
    if libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 2 | 4, options) != 0:
        raise OSError(ctypes.get_errno(), "mount tmpfs on /tmp")
    for target in ("/var/tmp", "/dev/shm", "/run/lock"):  # the same one (MS_BIND)
        if os.path.isdir(target) and not os.path.islink(target):
            if libc.mount(b"/tmp", target.encode(), None, 4096, None) != 0:
                raise OSError(ctypes.get_errno(), "bind /tmp on " + target)
def limit(res, value):
    soft, hard = resource.getrlimit(res)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(res, (value, value))
limit(resource.RLIMIT_CORE, 0)
if fsize != "-":
    limit(resource.RLIMIT_FSIZE, int(fsize))
if nproc != "-":
    limit(resource.RLIMIT_NPROC, int(nproc))
if uid != "-":
    os.setgroups([])
    os.setresgid(int(gid), int(gid), int(gid))
    os.setresuid(int(uid), int(uid), int(uid))
if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
if watch == "-":
    os.execvp(cmd[0], cmd)
watch = int(watch)
signal.signal(signal.SIGINT, lambda *args: None)  # interrupts are the kernel's
env = dict(os.environ)
env.pop("JPY_PARENT_PID", None)  # its parent is this init, which watches the grader
kernel = os.fork()
if kernel == 0:
    os.close(watch)
    os.execvpe(cmd[0], cmd, env)
poll = select.poll()
poll.register(watch, select.POLLIN | select.POLLHUP)
status = None
while status is None:
    while True:
        try:
            pid, wstatus = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid = 0
        if pid == 0:
            break
        if pid == kernel:
            status = os.waitstatus_to_exitcode(wstatus)
            break
    if status is None and poll.poll(200):
        status = 128 + signal.SIGKILL  # the grader is gone: so is everything here
try:
    os.kill(-1, signal.SIGKILL)
except ProcessLookupError:
    pass
os._exit(status if status >= 0 else 128 - status)
"""


class KernelSandbox:
    """Where, as whom and under which OS limits one kernel runs; :meth:`release` when done.

    As root: an account of its own (a slot held until released), a private folder owned by
    it (sockets, connection file, home, temp, a copy of the notebook's folder), the public
    data from a read-only copy, and the grader's held-out data closed to other accounts.
    Otherwise: the grader's user, with the same limits where the OS enforces them.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._slot = _acquire_slot()
        self.account = self._slot.account if self._slot is not None else None
        self.flags = _namespace_flags(network=self.limits.network, as_root=self.account is not None)
        if self.flags is None and not self.limits.network:
            isolation_prefix()  # warns once
        # As an account of its own, in the grader's place: the kernel's shared temporary
        # folders are private to it (mount namespace), so nothing of it may live there.
        base = str(_KERNELS_DIR) if self.account is not None else _short_base(self.shared)
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
        if self.account is not None:
            self.public_data = _public_data_copy()
            close_to_others(grader_only_dirs())
            _chown_tree(self.root, self.account.uid, self.account.gid)
            assert self._slot is not None
            self.cgroup = KernelCgroup.create(
                f"{_slot_cgroup(self._slot.number)}{self.root.name}",
                memory_mb=self.limits.memory_mb,
                processes=self.limits.processes,
            )

    @property
    def shared(self) -> bool:
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
        _EMPTY.touch(mode=0o000, exist_ok=True)
        _EMPTY.chmod(0o000)
        return [data_dir(), *raw_sources(), *staging_code()]

    def memory_stop(self) -> bool:
        """Whether the memory cgroup stopped the kernel (its OOM killer ended a process)."""
        if self.cgroup is not None and self.cgroup.oom_kills() > 0:
            self.oom_killed = True
        return self.oom_killed

    def grant(self, path: Path) -> None:
        """Let the kernel write into ``path`` (a folder of the grader's); reclaimed on release."""
        if self.account is not None:
            _chown_tree(path, self.account.uid, self.account.gid)
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
        _chown_tree(work, self.account.uid, self.account.gid)
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
            _chown_tree(work, self.account.uid, self.account.gid)

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
                env["AUTOGRADER_DATA_DIR"] = str(self.public_data)
        return env

    def _nproc(self) -> str:
        if self.account is not None:
            return str(self.limits.processes)
        if os.geteuid() == 0:
            return "-"  # not enforced for root: leave it
        # Counted per user: the grader's own processes and threads count too.
        return str(_tasks_of(os.getuid()) + self.limits.processes)

    def command(self, kernel_cmd: list[str]) -> list[str]:
        """The command that starts ``kernel_cmd`` in this sandbox; launch it with
        :attr:`pass_fds`."""
        prefix: list[str] = []
        watch = "-"
        if self.flags is not None:
            unshare = shutil.which("unshare")
            assert unshare is not None
            prefix = [unshare, *self.flags, "--"]
            if self.pid_namespace:
                read, write = os.pipe()
                self._pipes += [read, write]
                self.pass_fds = (read,)
                watch = str(read)
        acct = self.account
        launch = [
            sys.executable,
            "-I",
            "-S",
            "-c",
            _LAUNCH,
            self._nproc(),
            str(self.limits.file_size_mb * 2**20),
            str(acct.uid) if acct else "-",
            str(acct.gid) if acct else "-",
            watch,
            # memory-backed: at most the memory limit (counted in it too, with a cgroup)
            str(self.limits.memory_mb) if self.private_tmp else "-",
            ",".join(self.cgroup.procs_files) if self.cgroup is not None else "-",
            json.dumps([str(p) for p in self._hidden()]) if self.private_tmp else "-",
            str(_EMPTY),
            "--",
        ]
        return [*prefix, *launch, *kernel_cmd]

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
            "processes": self.limits.processes if acct or os.geteuid() != 0 else None,
            "file_size_mb": self.limits.file_size_mb,
        }

    def release(self) -> None:
        """Kill whatever the kernel's account still runs, give granted folders back to the
        grader, remove the private folder and free the account for the next kernel. Each
        step is best-effort and none raises: an account whose clean-up fails is retired."""
        if self._released:
            return
        self._released = True
        problems: list[str] = []

        def step(what: str, fn: Any, *args: Any) -> None:
            try:
                if fn(*args) is False:
                    problems.append(what)
            except Exception as exc:  # one notebook's mess must not fail the worker
                problems.append(f"{what}: {type(exc).__name__}: {exc}")

        try:
            if self.account is not None:
                step("killing the account's processes", _kill_account_processes, self.account)
            for fd in self._pipes:  # the kernel's init, if still there, ends everything
                with contextlib.suppress(OSError):
                    os.close(fd)
            if self.cgroup is not None:
                self.memory_stop()
                self.peak_memory_mb = self.cgroup.peak_mb()
                step("removing the kernel's cgroups", self.cgroup.remove)
            for path in self._granted:  # back to the grader first: then nothing is left to
                step(f"reclaiming {path}", _reclaim, path)  # the account but its own files
            step("removing the kernel's folder", remove_tree, self.root)
            if self.account is not None and self._slot is not None:
                number = self._slot.number
                step(
                    "cleaning the account",
                    lambda a: _clean_account(a, number) is None,
                    self.account,
                )
            if problems:
                log.warning("cleaning up after a kernel: %s", "; ".join(problems))
        finally:
            if self._slot is not None:
                if problems and self.account is not None:
                    _retire(self._slot.number, "; ".join(problems))
                self._slot.release()


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
        box.own(Path(self.connection_file))
        kw["env"] = box.environment(kw.get("env") or os.environ)
        self.isolated = box.network_isolated
        cmd = box.command(kernel_cmd)
        # What a kernel prints outside cells (ipykernel's banner, TensorFlow's start-up log)
        # would flood the grader's terminal; what a cell prints comes over the iopub channel.
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        if box.pass_fds:
            kw["pass_fds"] = box.pass_fds  # Popen keyword, passed on by jupyter_client
        return cmd, kw

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart and self._own_sandbox and self.sandbox is not None:
            self.sandbox.release()
            self.sandbox = None
            self._own_sandbox = False

    # AsyncKernelManager binds this public name to the base class's function, which nbclient
    # calls after a kernel died: without this, a killed kernel's folder stays behind.
    cleanup_resources = _async_cleanup_resources


# --- a spare kernel ------------------------------------------------------------------------


@dataclass
class _Spare:
    km: SandboxedKernelManager
    box: KernelSandbox
    key: tuple[Any, ...]


_SPARE: list[_Spare] = []  # at most one per process


def _spare_key(limits: Limits, kernel_name: str, arguments: list[str]) -> tuple[Any, ...]:
    # The kernel's environment is fixed when it starts: a spare fits only the same one.
    return (limits, kernel_name, tuple(arguments), tuple(sorted(os.environ.items())))


def start_spare_kernel(km: SandboxedKernelManager, limits: Limits, arguments: list[str]) -> None:
    """Start ``km``'s kernel now, in a sandbox of its own, for this process's next notebook
    (:func:`take_spare_kernel`): a batch worker grades one notebook after another, and the
    next kernel's start-up (a second of imports) then overlaps this one's evaluation."""
    discard_spare_kernel()
    box = KernelSandbox(limits)
    km.network, km.limits, km.sandbox = limits.network, limits, box
    try:
        from jupyter_core.utils import run_sync

        run_sync(km.start_kernel)(cwd=str(box.empty_workdir()), extra_arguments=arguments)
    except Exception as exc:  # no spare: the next notebook starts its kernel as usual
        log.warning("could not start a spare kernel: %s", exc)
        _stop(km, box)
        return
    if not _SPARE_EXIT:
        _SPARE_EXIT.append(True)
        at_exit(discard_spare_kernel)
    _SPARE.append(_Spare(km, box, _spare_key(limits, km.kernel_name, arguments)))


def take_spare_kernel(
    limits: Limits, kernel_name: str, arguments: list[str]
) -> tuple[SandboxedKernelManager, KernelSandbox] | None:
    """The spare kernel, when there is one, alive, started for the same limits, kernel and
    environment; the caller shuts it down and releases its sandbox."""
    if not _SPARE:
        return None
    spare = _SPARE.pop()
    alive = spare.km.has_kernel and kernel_exit_status(spare.km) is None
    if not alive or spare.key != _spare_key(limits, kernel_name, arguments):
        _stop(spare.km, spare.box)
        return None
    return spare.km, spare.box


def discard_spare_kernel() -> None:
    while _SPARE:
        spare = _SPARE.pop()
        _stop(spare.km, spare.box)


_SPARE_EXIT: list[bool] = []


def _stop(km: SandboxedKernelManager, box: KernelSandbox) -> None:
    """Synchronous: also runs at exit, when no event loop may be left."""
    process = getattr(getattr(km, "provisioner", None), "process", None)
    with contextlib.suppress(Exception):
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    with contextlib.suppress(Exception):
        km.cleanup_connection_file()
    box.release()  # the account's processes, the PID namespace's init: all ended


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


def death_reason(status: int | None) -> str:
    """Why a kernel ended, from its exit status (with a PID namespace, 128 + N stands for
    signal N, as a shell reports it)."""
    if status is None:
        return "the kernel died (it crashed or was killed by the system)"
    if status < 0 or status > 128:
        number = -status if status < 0 else status - 128
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"the kernel died (killed by {name}): it crashed or was killed by the system"
    return (
        f"the kernel died (exit code {status}): the notebook ended its own Python process "
        "or crashed it"
    )


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
