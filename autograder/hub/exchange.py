"""nbgrader's exchange collect, hardened against what a student can put in ``inbound``.

``inbound`` lets every student create entries under any name, and nbgrader's collect
copies them following links (``copytree``), checks the owner through links (``stat``),
stops the whole collect at the first name it cannot parse, and takes the submission time
from ``timestamp.txt``, which the student writes. Here:

- an entry is taken only if it is a real folder (``lstat``) owned by the student it is
  filed under; a link, a file, or a folder of another account is refused;
- its contents are copied through file descriptors opened without following links:
  a link, fifo or device anywhere in it, or a file of another account (a hard link), refuses
  the whole submission, and so does more than ``MAX_FILES`` files, ``MAX_BYTES`` bytes or
  ``MAX_DEPTH`` folders deep;
- the submission time is the latest change time (ctime) of the folder and everything in
  it, which no unprivileged account can set back, written as ``timestamp.txt``;
- each refusal is logged with its reason and the student's previous submission, if any,
  is taken instead; one bad entry never stops the others.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pwd
import stat
from typing import Any

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.exchange.default.collect import ExchangeCollect

from autograder.fstree import remove_tree

__all__ = ["OwnerCheckedCollect", "Refused", "copy_submission", "submission_time"]

MAX_FILES = 1000
MAX_BYTES = 512 * 2**20
MAX_DEPTH = 16
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Refused(Exception):
    """A submission folder that is not collected; the message says why."""


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a link"
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _walk(fd: int, owner: int | None, visit: Any, depth: int = 0, where: str = "") -> None:
    """Visit everything under the open folder ``fd`` through descriptors, never a link;
    raises Refused at the first entry that is not a regular file or folder of ``owner``."""
    stack = [(fd, where, depth)]
    opened: list[int] = []
    try:
        while stack:
            dfd, rel, level = stack.pop()
            if level > MAX_DEPTH:
                raise Refused(f"folders nested more than {MAX_DEPTH} deep")
            with os.scandir(dfd) as entries:
                names = sorted(e.name for e in entries)
            for name in names:
                path = f"{rel}{name}"
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                    raise Refused(f"{path} is {_kind(st.st_mode)}")
                flags = _DIR if stat.S_ISDIR(st.st_mode) else _FILE
                child = os.open(name, flags, dir_fd=dfd)
                opened.append(child)
                cst = os.fstat(child)  # what was opened, not what was listed
                if (cst.st_dev, cst.st_ino) != (st.st_dev, st.st_ino):
                    raise Refused(f"{path} changed while it was collected")
                if owner is not None and cst.st_uid != owner:
                    raise Refused(f"{path} belongs to another account")
                if stat.S_ISDIR(cst.st_mode):
                    visit(path, cst, None)
                    stack.append((child, f"{path}/", level + 1))
                else:
                    visit(path, cst, child)
                    os.close(opened.pop())
    finally:
        for child in opened:
            with contextlib.suppress(OSError):
                os.close(child)


def _open_submission(path: str, owner: int | None) -> tuple[int, os.stat_result]:
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise Refused(f"cannot be read: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise Refused(f"is {_kind(st.st_mode)}, not a folder")
    if owner is not None and st.st_uid != owner:
        raise Refused("belongs to another account")
    try:
        fd = os.open(path, _DIR)
    except OSError as exc:
        raise Refused(f"cannot be read: {exc.strerror}") from exc
    fst = os.fstat(fd)
    if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise Refused("changed while it was collected")
    return fd, fst


def submission_time(path: str, owner: int | None = None) -> datetime.datetime:
    """The latest change time (ctime) of the folder and everything in it, in UTC."""
    fd, st = _open_submission(path, owner)
    latest = [st.st_ctime]
    counted = [0]

    def visit(rel: str, st: os.stat_result, _fd: int | None) -> None:
        counted[0] += 1
        if counted[0] > MAX_FILES:
            raise Refused(f"more than {MAX_FILES} files")
        latest[0] = max(latest[0], st.st_ctime)

    try:
        _walk(fd, owner, visit)
    except OSError as exc:
        raise Refused(f"cannot be read: {exc}") from exc
    finally:
        os.close(fd)
    return _utc(latest[0])


def _utc(seconds: float) -> datetime.datetime:
    # Naive UTC, as nbgrader keeps every time (due dates, timestamps).
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(tzinfo=None)


def copy_submission(src: str, dest: str, owner: int | None = None) -> datetime.datetime:
    """Copy the folder ``src`` to the new folder ``dest``; the submission time (see
    :func:`submission_time`) of what was copied. Raises Refused, leaving nothing at
    ``dest``, if anything in ``src`` is not a regular file or folder of ``owner``."""
    fd, st = _open_submission(src, owner)
    latest = [st.st_ctime]
    totals = [0, 0]  # files, bytes

    def visit(rel: str, st: os.stat_result, file_fd: int | None) -> None:
        totals[0] += 1
        if totals[0] > MAX_FILES:
            raise Refused(f"more than {MAX_FILES} files")
        latest[0] = max(latest[0], st.st_ctime)
        target = os.path.join(dest, rel)
        if file_fd is None:
            os.mkdir(target, 0o755)
            return
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(out, "wb") as f:
            while chunk := os.read(file_fd, 1 << 20):
                totals[1] += len(chunk)
                if totals[1] > MAX_BYTES:
                    raise Refused(f"more than {MAX_BYTES // 2**20} MiB")
                f.write(chunk)

    try:
        os.mkdir(dest, 0o755)
        _walk(fd, owner, visit)
    except BaseException as exc:
        remove_tree(dest)
        if isinstance(exc, OSError):
            raise Refused(f"cannot be copied: {exc}") from exc
        raise
    finally:
        os.close(fd)
    return _utc(latest[0])


def _stamp(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S.%f UTC")


class OwnerCheckedCollect(ExchangeCollect):
    """Collect that takes from ``inbound`` only what a student may submit (module docs).

    Select it with ``c.ExchangeFactory.collect = "autograder.hub.exchange.OwnerCheckedCollect"``;
    the owner checks need one OS account per student (``check_owner``), the rest holds
    either way.
    """

    def _owner(self, student: str) -> int | None:
        if not self.check_owner:
            return None
        try:
            return pwd.getpwnam(student).pw_uid
        except KeyError:
            return -1  # no such account: nothing is owned by it

    def _candidates(self) -> dict[str, list[dict[str, Any]]]:
        """Each student's entries for this lab, newest (by submission time) first."""
        wanted_student = self.coursedir.student_id.strip("*") or None  # nbgrader's "*": all
        lab = self.coursedir.assignment_id
        by_student: dict[str, list[dict[str, Any]]] = {}
        with os.scandir(self.inbound_path) as entries:
            names = sorted(e.name for e in entries)
        for name in names:
            parts = name.rsplit("+", 3)
            if len(parts) < 3 or parts[1] != lab:
                continue
            student = parts[0]
            if wanted_student and student != wanted_student:
                continue
            path = os.path.join(self.inbound_path, name)
            try:
                when = submission_time(path, self._owner(student))
            except Refused as exc:
                self.log.error("Refused %s: %s", name, exc)
                continue
            record = {"username": student, "filename": name, "timestamp": when}
            by_student.setdefault(student, []).append(record)
        return {k: self._sort_by_timestamp(v) for k, v in by_student.items()}

    def init_src(self) -> None:
        if self.coursedir.course_id == "":
            self.fail("No course id specified. Re-run with --course flag.")
        self.course_path = os.path.join(self.root, self.coursedir.course_id)
        self.inbound_path = os.path.join(self.course_path, "inbound")
        if not os.path.isdir(self.inbound_path):
            self.fail(f"Course not found: {self.inbound_path}")
        with Gradebook(self.coursedir.db_url, self.coursedir.course_id) as gb:
            try:
                self.duedate = gb.find_assignment(self.coursedir.assignment_id).duedate
            except MissingEntry:
                self.duedate = None
        self.candidates = self._candidates()
        self.src_records = []
        for records in self.candidates.values():
            if self.duedate is not None and self.before_duedate:
                on_time = [r for r in records if r["timestamp"] <= self.duedate]
                records = on_time + [r for r in records if r not in on_time]
            self.src_records.append(records[0])

    def copy_files(self) -> None:
        lab = self.coursedir.assignment_id
        if not self.src_records:
            self.log.warning("No submissions of %r for course %r to collect", lab, self.root)
        for first in self.src_records:
            student = first["username"]
            dest = self.coursedir.format_path(self.coursedir.submitted_directory, student, lab)
            for record in self.candidates[student][self.candidates[student].index(first) :]:
                if self._collect_one(record, dest):
                    break

    def _collect_one(self, record: dict[str, Any], dest: str) -> bool:
        student, name = record["username"], record["filename"]
        existing = None
        if os.path.isdir(dest):
            with contextlib.suppress(Exception):  # nbgrader fails on a malformed one
                existing = self.coursedir.get_existing_timestamp(dest)
        if existing is not None and not (self.update and record["timestamp"] > existing):
            self.log.info("No newer submission to collect: %s %s", student, name)
            return True
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        staging = f"{dest}.collecting"
        remove_tree(staging)
        try:
            when = copy_submission(
                os.path.join(self.inbound_path, name), staging, self._owner(student)
            )
        except Refused as exc:
            self.log.error("Refused %s: %s", name, exc)
            return False
        # The student's own timestamp.txt is replaced by the time the files last changed.
        stamp = os.path.join(staging, "timestamp.txt")
        remove_tree(stamp)
        with open(stamp, "x") as f:
            f.write(_stamp(when))
        if os.path.lexists(dest):
            remove_tree(dest)
        os.rename(staging, dest)
        self.log.info("Collected %s %s, submitted %s", student, name, _stamp(when))
        return True
