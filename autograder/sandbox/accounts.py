"""The unprivileged accounts that student kernels and model evaluations run as.

When the grader runs as root (:func:`autograder.sandbox.isolation.accounts_wanted`), each
kernel runs as an account of its own, ``autograder-sandbox-<n>`` (created on first use, no
home, no login shell, one per kernel running at the same time), with no supplementary
groups and ``no_new_privs``; the evaluation of a saved model runs as
``autograder-evaluator``. Slot ``n`` (a lock file in the grader's own folder) is held for as
long as a kernel uses account ``n``, so two kernels never share one. Before a slot is used
and after its kernel ends, everything of the account's is killed and removed: a notebook's
processes, its files in the shared temporary folders and its cgroups; an account whose
clean-up fails is retired, never used again; one let go clean is not cleaned again when
next taken (its lock file says so, :func:`acquire_slot`). A batch cleans every free slot when it
starts (:func:`clean_free_slots`): what a killed grader left on a slot never taken again
goes too. ``RLIMIT_NPROC`` is enforced only for such an unprivileged account. Without root
the kernel runs as the grader's own user (a warning says so).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

from autograder.errors import ConfigError
from autograder.fstree import remove_tree
from autograder.sandbox.cgroup import PREFIX as CGROUP_PREFIX
from autograder.sandbox.cgroup import KernelCgroup
from autograder.sandbox.files import KERNELS_DIR, SLOT_DIR, WORK_DIR, sandbox_dirs
from autograder.sandbox.isolation import accounts_wanted, give_up_accounts, warn_once

__all__ = [
    "ACCOUNT_PREFIX",
    "EVALUATOR_ACCOUNT",
    "Account",
    "acquire_slot",
    "clean_account",
    "clean_free_slots",
    "evaluator_account",
    "kill_account_processes",
    "retire",
    "slot_cgroup",
    "tasks_of",
]

log = logging.getLogger(__name__)

ACCOUNT_PREFIX = "autograder-sandbox-"


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


class _Slot:
    """Sandbox account ``number``, held by this process until :meth:`release`."""

    def __init__(self, account: Account, lock: IO[str], number: int) -> None:
        self.account = account
        self.number = number
        self._lock: IO[str] | None = lock

    def release(self, *, clean: bool = False) -> None:
        """Let the slot go; ``clean``: its account was cleaned since its last use, and
        the next to take the slot need not clean it again."""
        if self._lock is not None:
            if clean:
                _mark(self._lock, _clean_mark())
            self._lock.close()  # drops the flock
            self._lock = None


# What a slot's lock file says of its account, written while the lock is held: "in use"
# from when a grader takes it, until one that cleaned it lets it go marked clean (in this
# boot: a machine that went down never did). Anything else, a grader killed meanwhile
# among them, and the account is cleaned before it is used.
_IN_USE = "in use"


@functools.cache
def _clean_mark() -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"clean {boot}" if boot else ""


def _mark(lock: IO[str], state: str) -> bool:
    try:
        lock.truncate(0)  # opened for appending: the next write lands at 0
        lock.write(state + "\n")
        lock.flush()
    except (OSError, ValueError):
        return False
    return True


def _marked_clean(lock: IO[str]) -> bool:
    try:
        lock.seek(0)
        state = lock.read().strip()
    except (OSError, ValueError):
        return False
    return bool(state) and state == _clean_mark()


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


# Finds and opens the kernel's and the grader's modules without importing them: importing
# ipykernel costs 0.3-0.5 CPU s, paid by every worker for every account it probes, while
# what stops an account is a folder it cannot enter or a file it cannot read.
_PROBE = """
import importlib.util
for name in ("ipykernel", "autograder.data.loaders"):
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{name} is not found")
    open(spec.origin, "rb").close()
"""


@functools.cache
def _account_can_run_python(uid: int, gid: int) -> str | None:
    """None when the account can start this Python and reach the kernel's and the grader's
    packages (a venv or checkout under /root, mode 0700, would stop it), else why not."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE],
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
    if not accounts_wanted():
        return None
    try:
        account = _ensure_account(EVALUATOR_ACCOUNT)
    except ConfigError as exc:
        warn_once("evaluator", f"evaluations run as the grader: {exc}")
        return None
    why = _account_can_run_python(account.uid, account.gid)
    if why is not None:
        warn_once("evaluator", f"evaluations run as the grader: {account.name} cannot: {why}")
        return None
    return account


def retire(n: int, why: str) -> None:
    """Never use slot ``n`` again (its account could not be cleaned: ``why``)."""
    log.warning("sandbox slot %d retired, never used again: %s", n, why)
    with contextlib.suppress(OSError):
        (SLOT_DIR / f"slot-{n}.retired").write_text(why + "\n")


def slot_cgroup(n: int) -> str:
    """The start of the names of slot ``n``'s kernel cgroups."""
    return f"slot{n}-"


def clean_account(account: Account, slot: int, *, killed: bool = False) -> str | None:
    """Kill the account's processes and remove its files and its slot's cgroups (all of
    them left by a grader that was killed); why not, if something stays. ``killed``: the
    caller has just killed them (:func:`kill_account_processes`); they are waited for, and
    should one be found that is not dying, all of it is done again."""
    if not killed:
        kill_account_processes(account)
    if not KernelCgroup.remove_stale(slot_cgroup(slot)):
        return f"cgroups of slot {slot} could not be removed"
    if not _remove_account_files(account):
        return f"files of {account.name} could not be removed"
    deadline, pause = time.monotonic() + 5, 0.002
    while _live(account.uid):
        if killed and _live(account.uid, any_id=True, dying=False):
            return clean_account(account, slot)  # one started since: all of it again
        killed = False
        if time.monotonic() > deadline:
            return f"processes of {account.name} are still running"
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    return None


def _lock_if_free(n: int) -> IO[str] | None:
    """Slot ``n``'s lock, taken; None where the slot is retired or a live grader holds it."""
    if (SLOT_DIR / f"slot-{n}.retired").exists():
        return None
    lock = (SLOT_DIR / f"slot-{n}.lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def clean_free_slots() -> None:
    """Clean every slot no grader holds now, as :func:`acquire_slot` would: what a grader
    killed mid-run left on a slot goes when the next batch starts, not when that slot is
    next used (which may be never), and so do its kernels' cgroups wherever in the
    hierarchies that grader ran. A slot that stays unclean is retired."""
    if not accounts_wanted():
        return
    groups: list[Path] | None = None
    for path in sorted(SLOT_DIR.glob("slot-*.lock")):
        number = path.name.removeprefix("slot-").removesuffix(".lock")
        if not number.isdigit():
            continue
        n = int(number)
        try:
            entry = pwd.getpwnam(f"{ACCOUNT_PREFIX}{n}")
            lock = _lock_if_free(n)
        except (KeyError, OSError):
            continue
        if lock is None:
            continue
        with lock:
            if groups is None:
                groups = KernelCgroup.named_anywhere("slot")
            name = CGROUP_PREFIX + slot_cgroup(n)
            left = clean_account(Account(entry.pw_name, entry.pw_uid, entry.pw_gid), n)
            elsewhere = [g for g in groups if g.name.startswith(name) and g.exists()]
            if left is None and not KernelCgroup.remove_folders(elsewhere):
                left = f"cgroups of slot {n} could not be removed"
            if left is not None:
                retire(n, left)
            else:
                _mark(lock, _clean_mark())


def acquire_slot() -> _Slot | None:
    """A sandbox account of our own (locked until released), or None where there is none."""
    if not accounts_wanted():
        return None
    try:
        sandbox_dirs()
        for n in range(4096):
            lock = _lock_if_free(n)
            if lock is None:
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
            # a submission, say) that the next kernel on this account could read. A slot
            # let go marked clean has none: nothing runs as its account while it is free.
            # Marked "in use" before it is used, or cleaned: a mark left saying clean would
            # let the next grader skip what this one may leave.
            if not (_marked_clean(lock) and _mark(lock, _IN_USE)):
                left = clean_account(account, n)
                if left is not None:
                    retire(n, left)
                    lock.close()
                    continue
                _mark(lock, _IN_USE)
            return _Slot(account, lock, n)
        raise ConfigError(f"no free sandbox slot in {SLOT_DIR}")
    except (OSError, ConfigError) as exc:
        give_up_accounts(str(exc))
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


# procps' kill(1) starts in 3 ms, an interpreter in 15: it runs three times per notebook.
_KILL = shutil.which("kill", path="/usr/bin:/bin")


def kill_account_processes(account: Account) -> None:
    """SIGKILL every process of the account: ``kill(-1)`` sent as the account itself reaches
    all of them at once (all but the sender), so a fork bomb cannot outrun it. Nothing is
    started when no process has the account's uid as real, effective or saved uid (kill(2)
    reaches those with it as real or saved): only such a process could start one. Nor is
    it started when every such process has a SIGKILL pending already (the kernel's, killed
    just before, not yet scheduled to die): none of them runs its own code again."""
    if not _live(account.uid, any_id=True, dying=False):
        return
    command = (
        [_KILL, "-KILL", "--", "-1"] if _KILL else [sys.executable, "-I", "-S", "-c", _KILL_ALL]
    )
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            command,
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
    for base in shared | {str(KERNELS_DIR), str(WORK_DIR)}:
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


def _live(uid: int, *, any_id: bool = False, dying: bool = True) -> bool:
    """Whether a process has ``uid`` as its real uid (with ``any_id``: as its real,
    effective or saved one) and is not a zombie. A process whose first thread ended while
    others run shows as a zombie: it counts as live while it has more than one thread.
    Without ``dying``, nor does one with a SIGKILL pending (it never returns to its code).

    Read from ``/proc/<pid>/status`` directly, one file a process: a batch asks this some
    seven times a submission, and psutil's two reads a process and its objects cost three
    times as much (5.0 ms a scan against 2.0 ms, on 67 processes)."""
    fields = 3 if any_id else 1
    wanted = str(uid).encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                status = _status_fields(f.read())
        except OSError:  # ended meanwhile
            continue
        ids = status.get(b"Uid", b"").split()[:fields]
        if wanted in ids and _running(status, dying):
            return True
    return False


_SIGKILL_BIT = 1 << (signal.SIGKILL - 1)


def _running(status: dict[bytes, bytes], dying: bool = True) -> bool:
    """Whether the process of these ``/proc/<pid>/status`` fields is not a zombie (or a
    zombie first thread with others running) and, unless ``dying``, has no SIGKILL pending
    (to the process, or to its first thread: either ends every thread)."""
    if status.get(b"State", b"").startswith(b"Z") and int(status.get(b"Threads", b"1") or 1) <= 1:
        return False
    if dying:
        return True
    pending = int(status.get(b"ShdPnd") or b"0", 16) | int(status.get(b"SigPnd") or b"0", 16)
    return not pending & _SIGKILL_BIT


def _status_fields(data: bytes) -> dict[bytes, bytes]:
    """The fields of a ``/proc/<pid>/status`` file that :func:`_live` reads."""
    out = {}
    for key in (b"Uid", b"State", b"Threads", b"SigPnd", b"ShdPnd"):
        start = data.find(b"\n" + key + b":")
        if start >= 0:
            start += len(key) + 2
            end = data.find(b"\n", start)
            out[key] = data[start : end if end >= 0 else None].strip()
    return out


def tasks_of(uid: int) -> int:
    """Processes and threads of ``uid`` (what ``RLIMIT_NPROC`` counts)."""
    total = 0
    for p in psutil.process_iter(["uids", "num_threads"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if p.info["uids"].real == uid:
                total += int(p.info["num_threads"] or 1)
    return total
