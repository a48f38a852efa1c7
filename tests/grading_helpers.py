"""Shared helpers for the end-to-end tests: grade a lab's example submissions once."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest

from autograder._runtime import environment
from autograder.authoring.demo import DEMO_ADVERSARIAL_LIMITS
from autograder.authoring.examples import EXAMPLES, example_path
from autograder.batch.scheduling import grade_batch
from autograder.course import Course, create_course
from autograder.grading.preprocessors import read_result
from autograder.results import GradingResult
from autograder.rubric import Threshold, load_rubric

# IMDB trains on 4,000 reviews in the test suite (thresholds of their own in the rubric).
QUICK = {"AUTOGRADER_TRAIN_LIMIT": "imdb=4000"}


# Adversarial examples hang or hoard memory on purpose: graded under tight limits, so that
# each costs seconds instead of the production limits' half hour. The per-cell timeout is
# above the notebook's, so that a hang ends the notebook (the case these examples test).
ADVERSARIAL_LIMITS = DEMO_ADVERSARIAL_LIMITS  # the demo grades them the same way


def limits_for(lab: str, name: str) -> dict[str, str]:
    return ADVERSARIAL_LIMITS if EXAMPLES[lab][name].adversarial else {}


def ordinary_examples(lab: str) -> list[str]:
    """The lab's examples that are honest work (right or wrong), not attacks on the grader:
    the adversarial ones are graded together by tests/test_adversarial.py."""
    return [name for name, example in EXAMPLES[lab].items() if not example.adversarial]


def grade_examples(
    lab: str, root: Path, names: list[str] | None = None
) -> tuple[Course, dict[str, Any]]:
    """Grade ``names`` (the ordinary examples by default) with the batch grader, two
    workers: scores are the serial ``nbgrader autograde``'s (tests/test_batch.py)."""
    names = names or ordinary_examples(lab)
    with environment(QUICK):
        course = create_course(root, labs=[lab])
        for name in names:
            course.submit(name, lab, example_path(lab, name))
        outcomes: dict[str, Any] = {}
        groups = [[n for n in names if not EXAMPLES[lab][n].adversarial]]
        groups.append([n for n in names if EXAMPLES[lab][n].adversarial])
        for group in groups:
            if not group:
                continue
            with environment(limits_for(lab, group[0])):
                summary = grade_batch(course.root, labs=[lab], students=group, progress=False)
            for o in summary.outcomes:
                outcomes[o.student] = {"success": o.status == "graded", "error": o.reason}
    return course, outcomes


def result_of(course: Course, lab: str, student: str) -> GradingResult:
    result = read_result(course.root / "autograded" / student / lab, load_rubric(lab).notebook)
    assert result is not None, f"{student} was not graded"
    return result


def scores(course: Course, lab: str, student: str) -> dict[str, float]:
    return {c.id: c.score for c in result_of(course, lab, student).checks}


def messages(course: Course, lab: str, student: str, check: str) -> tuple[str, ...]:
    return result_of(course, lab, student).check(check).messages


def autograded(course: Course, lab: str, student: str) -> nbformat.NotebookNode:
    """The notebook nbgrader's autograde wrote for ``student``."""
    return nbformat.read(course.root / "autograded" / student / lab / f"{lab}.ipynb", 4)


def cell(nb: nbformat.NotebookNode, grade_id: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def shown(cell: nbformat.NotebookNode) -> str:
    """What the student reads in a cell's outputs (colour codes left out). Consecutive
    outputs of one stream read as one text, as Jupyter shows them: the kernel flushes a
    print() in pieces when its output thread runs between the writes (a busy machine)."""
    texts: list[str] = []
    last_stream = None
    for o in cell.get("outputs", []):
        stream = o.get("name") if o.get("output_type") == "stream" else None
        text = o.get("text", "") + o.get("evalue", "") + "\n" + "\n".join(o.get("traceback", []))
        if stream is not None and stream == last_stream:
            texts[-1] = texts[-1].removesuffix("\n") + text
        else:
            texts.append(text)
        last_stream = stream
    return _ANSI.sub("", "\n".join(texts))


def sandbox_record() -> dict[str, Any]:
    """What a kernel's sandbox holds here (``KernelSandbox.describe``)."""
    from autograder.sandbox.kernel import KernelSandbox

    box = KernelSandbox()
    try:
        return box.describe()
    finally:
        box.release()


def separate_accounts() -> bool:
    """Whether kernels here run as sandbox accounts (the grader is root and may create them)."""
    return bool(sandbox_record()["separate_user"])


def calibration_runs() -> Iterator[tuple[str, str, Threshold, str, dict[str, Any]]]:
    """Every recorded calibration run (reference and variants) with the rubric threshold of
    its data source: (lab, source, threshold, metric, run)."""
    from autograder.rubric import lab_ids, load_calibration

    for lab in lab_ids():
        calibration = load_calibration(lab)
        for check in load_rubric(lab).checks:
            for source, threshold in check.thresholds.items():
                entry = calibration.get(source, {})
                for e in [entry, *entry.get("variants", {}).values()]:
                    # a variant calibrated for a threshold of its own is held to that one
                    own = [v for v in threshold.variants.values() if v.example == e.get("example")]
                    for run in e.get("runs", []):
                        yield lab, source, own[0] if own else threshold, e["metric"], run


def sandbox_uids(evaluator: bool = True) -> set[int]:
    """The uids of the sandbox accounts (and of the evaluator's, with ``evaluator``)."""
    import pwd

    from autograder.sandbox.accounts import ACCOUNT_PREFIX, EVALUATOR_ACCOUNT

    return {
        p.pw_uid
        for p in pwd.getpwall()
        if p.pw_name.startswith(ACCOUNT_PREFIX) or (evaluator and p.pw_name == EVALUATOR_ACCOUNT)
    }


def sandbox_processes(evaluator: bool = True) -> list[str]:
    """Every process of the sandbox accounts (and of the evaluator's): "pid name"."""
    import psutil

    uids = sandbox_uids(evaluator)
    return [
        f"{p.pid} {p.info['name']}"
        for p in psutil.process_iter(["uids", "name"])
        if p.info["uids"] and p.info["uids"].real in uids
    ]


def sandbox_processes_left(seconds: float, evaluator: bool = True) -> list[str]:
    """:func:`sandbox_processes` once none is left, or as they are after ``seconds``:
    a killed kernel's processes take a moment to be gone."""
    import time

    deadline = time.monotonic() + seconds
    while (left := sandbox_processes(evaluator)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def orphaned_fork_servers() -> list[str]:
    """Fork servers (autograder.sandbox.forkserver) whose grading process is gone."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "ppid"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if "autograder/sandbox/forkserver.py" in cmdline and (
            p.info["ppid"] in (0, 1) or not psutil.pid_exists(p.info["ppid"])
        ):
            found.append(f"{p.pid} {cmdline[:120]}")
    return found


_HOLD = """
import select, sys, time
from pathlib import Path
from autograder.course_lock import writing_grades
with writing_grades(Path(sys.argv[1])):
    print("held", flush=True)
    select.select([sys.stdin], [], [], float(sys.argv[2]))  # a line, or the time, ends it
    print(time.time(), flush=True)
"""


class LockHolder:
    """Another process holding a course's writing lock (:func:`writing_lock_held`)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._proc = proc

    def release(self) -> float:
        """Let go now, if it has not yet; the time it let go."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.write("\n")
            self._proc.stdin.flush()
        return float(self._proc.stdout.readline())


@contextlib.contextmanager
def writing_lock_held(course: Path, seconds: float = 600) -> Iterator[LockHolder]:
    """Another process (a batch recording a grade, say) holding ``course``'s writing lock
    (``autograder.course_lock.writing_grades``) for ``seconds``, or until released."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(course), str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield LockHolder(proc)
    finally:
        proc.kill()
        proc.wait()


@dataclass
class Leftovers:
    """What :func:`leftovers_of_a_killed_grader` planted on free slot ``slot``."""

    slot: int
    sleeper: subprocess.Popen[bytes]
    paths: tuple[Path, ...]  # the group, the kernel folder, the stray file
    retired: Path  # the slot's retirement mark, which must not appear

    def remaining(self) -> list[str]:
        """What is still there of it (the sleeper aside)."""
        return [str(p) for p in (*self.paths, self.retired) if p.exists()]


@contextlib.contextmanager
def group_in_another_session(name: str) -> Iterator[Path]:
    """A v1 pids group ``name`` under a parent that is not this grader's cgroup, as a
    grader that ran in another session or service made it; removed on the way out, and
    its parent once empty (what was put in it must be gone by then). Skips where there is
    no v1 pids hierarchy, or not as root."""
    from autograder.sandbox.cgroup import cgroup_unavailable

    pids_root = Path("/sys/fs/cgroup/pids")
    if os.geteuid() != 0 or cgroup_unavailable() or not pids_root.is_dir():
        pytest.skip("no v1 pids hierarchy to plant a group in here (or not root)")
    other = pids_root / f"another-session-{os.getpid()}"
    group = other / name
    group.mkdir(parents=True)
    try:
        yield group
    finally:
        for path in (group, other):
            with contextlib.suppress(OSError):
                path.rmdir()


@contextlib.contextmanager
def leftovers_of_a_killed_grader() -> Iterator[Leftovers]:
    """What a grader killed while it ran in another cgroup (another session or service)
    leaves on a slot no grader holds now: a process of the slot's account inside a pids
    group under another parent, a kernel folder and a file in /tmp; all removed again on
    the way out. Skips where there are no sandbox accounts or no v1 pids hierarchy."""
    from autograder.sandbox.accounts import acquire_slot, slot_cgroup
    from autograder.sandbox.cgroup import PREFIX
    from autograder.sandbox.files import KERNELS_DIR, SLOT_DIR

    slot = acquire_slot()
    if slot is None:
        pytest.skip("no sandbox accounts here (not root)")
    account, n = slot.account, slot.number
    slot.release()
    folder = KERNELS_DIR / "agk-planted"
    stray = Path(tempfile.gettempdir()) / f"left-by-slot-{n}"
    with group_in_another_session(f"{PREFIX}{slot_cgroup(n)}agk-planted") as group:
        sleeper = None
        try:
            folder.mkdir()
            stray.write_text("a copy of a submission")
            for path in (folder, stray):
                os.chown(path, account.uid, account.gid)
            sleeper = subprocess.Popen(["sleep", "600"], user=account.uid, group=account.gid)
            (group / "cgroup.procs").write_text(str(sleeper.pid))
            yield Leftovers(n, sleeper, (group, folder, stray), SLOT_DIR / f"slot-{n}.retired")
        finally:
            if sleeper is not None and sleeper.poll() is None:
                sleeper.kill()
                sleeper.wait()
            shutil.rmtree(folder, ignore_errors=True)
            stray.unlink(missing_ok=True)


def pid_of_a_process_gone() -> int:
    """The pid of a process that has ended (and was reaped)."""
    code = "import os; print(os.getpid())"
    pid = int(subprocess.run([sys.executable, "-c", code], capture_output=True).stdout)
    assert not psutil.pid_exists(pid)
    return pid
