"""File trees that a student's code may have shaped: walked and removed safely.

A notebook can leave a tree thousands of folders deep (deeper than Python's recursion
limit, whose ``os.walk`` and ``shutil.rmtree`` then raise ``RecursionError``, or than
``PATH_MAX``), links to anything, folders without permissions, fifos. Everything here is
iterative, never follows a link, never crosses into another file system, and is
best-effort per entry: one entry that cannot be removed does not stop the rest, and the
caller learns whether anything was left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable

__all__ = ["copy_files", "remove_tree", "walk_tree", "write_fresh"]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, dir_fd: int | None) -> int:
    try:
        return os.open(name, _DIR, dir_fd=dir_fd)
    except PermissionError:
        # A folder the owner made unreadable (only matters when not running as root).
        os.chmod(name, 0o700, dir_fd=dir_fd)
        return os.open(name, _DIR, dir_fd=dir_fd)


def remove_tree(path: str | os.PathLike[str]) -> bool:
    """Remove ``path`` and everything under it; True when it is gone.

    Goes down one folder at a time and back up through ``..``, so at most two folders are
    open whatever the depth, and no path longer than one name is ever formed."""
    path = os.fspath(path)
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat.S_ISDIR(top.st_mode):
        with contextlib.suppress(OSError):
            os.unlink(path)
        return not os.path.lexists(path)
    try:
        fd = _open_dir(path, None)
    except OSError:
        return False
    stuck: set[tuple[int, int]] = set()  # folders that could not be emptied
    depth = 0
    try:
        while True:
            child, blocked = None, False
            try:
                names = os.listdir(fd)
            except OSError:
                names, blocked = [], True
            for name in names:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                except OSError:
                    blocked = True
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    try:
                        os.unlink(name, dir_fd=fd)
                    except FileNotFoundError:
                        pass
                    except OSError:
                        blocked = True
                    continue
                if (st.st_dev, st.st_ino) in stuck or st.st_dev != top.st_dev:
                    blocked = True  # could not be emptied before, or another file system
                    continue
                try:
                    os.rmdir(name, dir_fd=fd)
                    continue
                except FileNotFoundError:
                    continue
                except OSError:
                    pass
                try:
                    child = _open_dir(name, fd)
                    break
                except OSError:
                    stuck.add((st.st_dev, st.st_ino))
                    blocked = True
            if child is not None:
                os.close(fd)
                fd, depth = child, depth + 1
                continue
            if blocked:
                here = os.fstat(fd)
                stuck.add((here.st_dev, here.st_ino))
            if depth == 0:
                break
            parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd, depth = parent, depth - 1
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(path)
    return not os.path.lexists(path)


def walk_tree(
    path: str | os.PathLike[str],
    visit: Callable[[str, os.stat_result], None],
    *,
    max_depth: int = 32,
) -> bool:
    """Call ``visit(path, lstat)`` for ``path``'s entries, folders before their contents,
    without recursion or following links (a link is visited, never entered). A folder
    deeper than ``max_depth`` is removed instead of walked (no tree the grader makes is
    that deep). ``visit`` may remove what it is given. False if something could not be
    listed or removed."""
    ok = True
    top = os.lstat(path)
    stack = [(os.fspath(path), 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            ok = False
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                ok = False
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if is_dir and (depth >= max_depth or st.st_dev != top.st_dev):
                ok = remove_tree(entry.path) and ok
                continue
            visit(entry.path, st)
            if is_dir and os.path.isdir(entry.path) and not os.path.islink(entry.path):
                stack.append((entry.path, depth + 1))
    return ok


def copy_files(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> list[str]:
    """Copy the regular files directly in ``source`` into the folder ``target`` (made if
    missing): no folders, links, fifos or devices, and no link followed. The names copied."""
    os.makedirs(target, mode=0o700, exist_ok=True)
    copied = []
    for entry in os.scandir(source):
        try:
            if not stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as src, open(os.path.join(target, entry.name), "wb") as dst:
            shutil.copyfileobj(src, dst)
        copied.append(entry.name)
    return copied


def write_fresh(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` to a file made new at ``path``: whatever was there (a folder, a link,
    a file of someone else's) is removed first, and the file is created exclusively,
    never through a link."""
    if not remove_tree(path):
        raise OSError(f"cannot replace {os.fspath(path)}")
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
