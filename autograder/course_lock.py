"""Who writes a course's grades, and when.

Three graders write a course's gradebook and its ``autograded/`` and ``feedback/``
folders: the batch (``autograder grade``, often as root), the grade-on-submit service and
the formgrader (both the course's grader account). nbgrader takes no lock of its own, and
its autograde removes and rewrites a submission's folder: two at once could leave a
notebook from one and grades from the other. So each grading holds :func:`writing_grades`
while it writes: the batch for each submission it records, grade-on-submit for each
collect-to-feedback round, the formgrader for each of its collect, autograde and feedback
steps (:mod:`autograder.hub.server`). One waits for the other; none is refused.
:func:`one_batch` keeps a second batch off the course altogether (refused, naming the
first). ``nbgrader autograde`` typed in a terminal takes neither (nbgrader offers no hook
around a whole autograde).

Both are ``flock`` locks on files in ``<course>/.autograder``: the kernel drops them when
their process ends, however it ends, and a lock needs no write access to its file (the
grader account locks the file a root batch made).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from autograder.errors import GradingError

__all__ = ["one_batch", "writing_grades"]

_BATCH = "grade.lock"
_WRITING = "writing.lock"


def _open(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return path.open("a+")
    except PermissionError:  # another account's file (a root batch's): locked all the same
        return path.open("r")


@contextlib.contextmanager
def one_batch(course_root: Path) -> Iterator[None]:
    """One batch per course at a time: a second one is refused, naming the first."""
    # Made here too, as whoever runs the batch: the grader account may not be able to
    # create files in a root batch's folder, but it can lock one that is there.
    _open(course_root / ".autograder" / _WRITING).close()
    with _open(course_root / ".autograder" / _BATCH) as lock:
        # A batch that was just killed holds the lock until its last worker is gone (tens
        # of milliseconds): wait a moment before calling it a second grader.
        deadline = time.monotonic() + 5
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                lock.seek(0)
                holder = lock.read().strip() or "unknown"
                raise GradingError(
                    f"another `autograder grade` (pid {holder}) is grading {course_root}: "
                    "wait for it to finish or stop it"
                ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield


@contextlib.contextmanager
def writing_grades(
    course_root: Path, *, waiting: Callable[[], None] | None = None
) -> Iterator[None]:
    """Held while one grading writes the course's grades; blocks while another does.
    ``waiting`` is called once, before blocking, when the lock is not free at once."""
    with _open(course_root / ".autograder" / _WRITING) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
