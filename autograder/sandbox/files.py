"""The sandbox's folders and who may read them: the grader's own places, the folders it hands
to a kernel and takes back, the kernel's read-only copy of the public data, and the
permissions that keep the rest of the grader's files from other accounts.

A kernel that runs as a sandbox account works in a private copy of the submission's folder
and reads the public data from a read-only copy; the held-out data, the course directory and
the other kernels' folders are closed to it. What the kernel wrote is given back to the
grader (:func:`reclaim`) before the grader reads it, and what a killed grader left behind is
removed by the next one (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

import psutil

from autograder._runtime import at_exit
from autograder.data.loaders import data_dir
from autograder.errors import ConfigError
from autograder.fstree import remove_tree, walk_tree
from autograder.sandbox.isolation import accounts_wanted

__all__ = [
    "EMPTY",
    "KERNELS_DIR",
    "SANDBOX_DIR",
    "SLOT_DIR",
    "WORK_DIR",
    "chown_tree",
    "close_to_others",
    "grader_temp",
    "grader_work_dir",
    "public_data_copy",
    "reclaim",
    "remove_stale_temps",
    "sandbox_dirs",
    "short_base",
]

log = logging.getLogger(__name__)

# The grader's own places, outside every shared temporary folder (a kernel gets private
# ones): slot n (account ACCOUNT_PREFIX + n) is held by whoever holds the lock on
# slots/slot-<n>.lock, so two kernels never share an account; slots/slot-<n>.retired marks
# an account whose clean-up failed, never used again. kernels/ holds each kernel's private
# folder (its own, 0700) and work/ the grader's folders handed to a kernel (the capture's).
SANDBOX_DIR = Path("/run/autograder-sandbox")
SLOT_DIR = SANDBOX_DIR / "slots"
KERNELS_DIR = SANDBOX_DIR / "kernels"
WORK_DIR = SANDBOX_DIR / "work"
EMPTY = SANDBOX_DIR / "hidden"  # bound over each file the kernel must not read


def sandbox_dirs() -> None:
    """The grader's folders: only root may list them; accounts may pass through to their
    own folder inside ``kernels/`` and ``work/``."""
    SANDBOX_DIR.mkdir(mode=0o711, exist_ok=True)
    SLOT_DIR.mkdir(mode=0o700, exist_ok=True)
    for folder, mode in ((SANDBOX_DIR, 0o711), (KERNELS_DIR, 0o711), (WORK_DIR, 0o711)):
        folder.mkdir(mode=mode, exist_ok=True)
        st = folder.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ConfigError(f"{folder} is not the grader's own folder")
        folder.chmod(mode)


def grader_work_dir() -> str:
    """Where the grader makes folders it hands to a kernel (the capture's): its own place
    when kernels run as sandbox accounts (they get private temporary folders, so the
    shared ones are not theirs to see), else the usual temporary folder."""
    if accounts_wanted():
        with contextlib.suppress(OSError, ConfigError):
            sandbox_dirs()
            return str(WORK_DIR)
    return tempfile.gettempdir()


def grader_temp(kind: str) -> Path:
    """A new folder of the grader's (0700) for one submission's files: capture, copies,
    evaluation. Its name carries this process's pid, so that one left by a grader that was
    killed can be told from one in use (:func:`remove_stale_temps`)."""
    prefix = f"autograder-{os.getpid()}-{kind}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=grader_work_dir()))


def remove_stale_temps() -> None:
    """Remove the folders of :func:`grader_temp`, public data copies, and evaluation
    cgroups, whose grader is gone (killed mid-batch)."""
    from autograder.sandbox.cgroup import EVALUATION_CGROUP, KernelCgroup

    if os.geteuid() == 0:
        KernelCgroup.remove_orphans(EVALUATION_CGROUP)
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


def short_base(separate_account: bool) -> str:
    """Where the kernel's private folder goes: a unix socket's path holds at most 107 bytes,
    and an account of its own must be able to enter every folder on the way."""
    tmp = tempfile.gettempdir()
    ok = len(tmp) <= 60 and (not separate_account or _traversable(Path(tmp)))
    return tmp if ok or not os.path.isdir("/tmp") else "/tmp"


_PUBLIC: dict[str, Path] = {}


def public_data_copy() -> Path | None:
    """A read-only, world-readable copy of the staged ``public/`` data (never ``heldout/``)
    for kernels that run as a sandbox account; made once per process and data version."""
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


# --- handing folders to a kernel and taking them back ---------------------------------------


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """Give ``path`` and everything in it to ``uid``:``gid``, without following links."""
    os.lchown(path, uid, gid)
    walk_tree(path, lambda p, st: os.lchown(p, uid, gid))


def reclaim(path: Path) -> bool:
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
