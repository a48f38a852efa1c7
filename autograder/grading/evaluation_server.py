"""A warm evaluator: TensorFlow imported once, one forked child per submission.

Evaluating a saved model in a fresh interpreter costs about 5 s of TensorFlow import per
submission. The batch grader instead keeps one server process per worker that has imported
TensorFlow and decoded the data (without running any TensorFlow op, so forking stays safe)
and forks a child for each evaluation (:mod:`autograder.grading.evaluation_child`), ahead
of its submission when the client asks (:meth:`Evaluator.prepare`: a batch's worker does
while each notebook runs); a serial ``nbgrader autograde`` starts a server for one. Each
child starts from that clean state and exits when done, so nothing one submission's model
does can reach the next one, and the grade is still computed outside the student's kernel.
Where kernels are forked (:mod:`autograder.sandbox.forked`), the server is itself forked
from the kernels' fork server, which has imported TensorFlow already, and decodes the data
after that fork; elsewhere it is a process of its own.

The child gives up the grader's privileges before it reads anything the kernel wrote: the
server copies the capture files (regular files only, each within its cap) into a folder of
the evaluator account's and only then hands the child its request; the child has joined a
memory, pids and cpu cgroup of its own, set resource limits and switched to that account
(``autograder-evaluator``, where the grader runs as root) when it was forked, and reads the
data only from the server's memory. It hands its result back as a file the server checks
before storing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from autograder.fstree import remove_tree, write_fresh
from autograder.grading.evaluation_child import MAX_RESULT, RESULT, Child, fork_child
from autograder.results import GradingResult
from autograder.settings import QUIET_TENSORFLOW

__all__ = ["Evaluator", "grade_in_subprocess"]

_MODULE = "autograder.grading.evaluation_server"
_MAX_LIMIT_RECORD = 2**16


class Evaluator:
    """Client of one evaluator server (``python -m autograder.grading.evaluation_server``)."""

    def __init__(self, labs: tuple[str, ...] = ()) -> None:
        self.labs = labs
        self.last_uid: int | None = None  # the account the last evaluation ran as
        self._proc: Any = None  # a Popen, or a ForkedProcess with the same pipes

    def _start(self) -> Any:
        if self._proc is None or self._proc.poll() is not None:
            from autograder.sandbox.forked import fork_module

            env = {**os.environ, **QUIET_TENSORFLOW}
            # Forked from this process's kernel fork server where one runs: TensorFlow is
            # imported there already (a worker's start-up then imports it once, not twice).
            self._proc = fork_module(_MODULE, [*self.labs], env) or subprocess.Popen(
                [sys.executable, "-m", _MODULE, *self.labs],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
        return self._proc

    @property
    def forked(self) -> bool:
        """Whether the running server was forked from the kernels' fork server."""
        return self._proc is not None and not isinstance(self._proc, subprocess.Popen)

    def warm(self) -> None:
        """Start the server now (imports and data loading overlap other work)."""
        self._start()

    def wait_ready(self, timeout: float = 300) -> bool:
        """Block until the server has imported TensorFlow and decoded its labs' data."""
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps({"ping": True, "timeout": timeout}) + "\n")
            proc.stdin.flush()
            return bool(proc.stdout.readline())
        except (BrokenPipeError, OSError):
            return False

    def evaluate(
        self, lab: str, artifacts: Path, *, timeout: float = 600, retry: bool = True
    ) -> GradingResult:
        """Grade one submission's artifacts in a forked child; failures become results."""
        return self.submit(lab, artifacts, timeout=timeout, retry=retry)()

    def submit(
        self, lab: str, artifacts: Path, *, timeout: float = 600, retry: bool = True
    ) -> Callable[[], GradingResult]:
        """:meth:`evaluate`, handed to the server at once: the function returned waits for
        the result, so the caller can work meanwhile. One evaluation at a time; the
        artifacts stay in place until the result is in."""
        out = artifacts / RESULT
        remove_tree(out)  # whatever stands there, the server writes a new file
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        request = {"lab": lab, "artifacts": str(artifacts), "out": str(out), "timeout": timeout}
        try:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            sent = True
        except (BrokenPipeError, OSError):
            sent = False
        return lambda: self._result(proc, sent, lab, artifacts, timeout, retry)

    def prepare(self) -> None:
        """Have the server fork the next evaluation's child and warm it up now (while a
        notebook runs, say), not once the result is wanted. No reply; the server may be
        gone, which the next evaluation finds."""
        proc = self._start()
        with contextlib.suppress(OSError):
            proc.stdin.write(json.dumps({"prepare": True}) + "\n")
            proc.stdin.flush()

    def _result(
        self, proc: Any, sent: bool, lab: str, artifacts: Path, timeout: float, retry: bool
    ) -> GradingResult:
        line = ""
        if sent:
            with contextlib.suppress(OSError):
                line = proc.stdout.readline()
        if not line:
            # The server itself is gone: start another for this one (once), and the next.
            self.close()
            if retry:
                return self.evaluate(lab, artifacts, timeout=timeout, retry=False)
            return _failed(lab, "the grader's evaluator failed")
        out = artifacts / RESULT
        reply = json.loads(line)
        self.last_uid = reply.get("uid")
        if reply["status"] == "timeout":
            return _failed(lab, f"grader timed out after {timeout:.0f} s evaluating the model")
        if reply["status"] != "ok" or not out.is_file():
            return _failed(lab, f"grader failed (exit {reply.get('exit')})")
        return GradingResult.from_json(out.read_text())

    def close(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                if self._proc.stdin:
                    self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            with contextlib.suppress(OSError):
                if self._proc.stdout:
                    self._proc.stdout.close()
            self._proc = None

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def grade_in_subprocess(lab: str, artifacts: Path, *, timeout: float = 600) -> GradingResult:
    """Evaluate one submission in a server of its own, as a batch's worker would."""
    with Evaluator((lab,)) as evaluator:
        return evaluator.evaluate(lab, artifacts, timeout=timeout)


def _ended(pid: int, timeout: float) -> bool:
    """Whether the child ``pid`` ended within ``timeout`` seconds (left to be reaped)."""
    try:
        pidfd = os.pidfd_open(pid)  # readable when the child ends: no polling delay
    except OSError:  # a kernel without pidfds (before Linux 5.3): polled
        deadline = time.monotonic() + timeout
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def _wait(pid: int, timeout: float) -> int | None:
    """The child's exit status, or None after killing it at the deadline."""
    if not _ended(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _read_regular(path: Path, cap: int) -> tuple[bytes, os.stat_result] | None:
    """At most ``cap`` bytes of ``path`` and its status, if it is a regular file (never
    through a link, never blocking on a fifo); None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        return (f.read(cap), st) if stat.S_ISREG(st.st_mode) else None


def _private_copy(artifacts: Path, account: Any) -> Path:
    """The capture's files, copied into a new folder that only ``account`` (or, without
    one, the grader) can enter. Files over their cap are cut one byte past it, so the
    evaluation still sees that they were too large."""
    from autograder.grading.artifacts import MAX_BYTES
    from autograder.grading.capture import CAPTURE_FILE, MODEL_FILE
    from autograder.sandbox.files import grader_temp
    from autograder.sandbox.stops import LIMIT_FILE

    work = grader_temp("evaluation")
    caps = {**{n: c + 1 for n, c in MAX_BYTES.items()}, LIMIT_FILE: _MAX_LIMIT_RECORD}
    assert set(caps) >= {CAPTURE_FILE, MODEL_FILE}
    for name, cap in caps.items():
        found = _read_regular(artifacts / name, cap)
        if found is not None:
            write_fresh(work / name, found[0])
    if account is not None:
        for path in [work, *work.iterdir()]:
            os.chown(path, account.uid, account.gid)
    return work


def _read_result(work: Path) -> tuple[str, int] | None:
    """The child's result file, if it is a regular file of a sane size, and its owner
    (the account the child ran as)."""
    found = _read_regular(work / RESULT, MAX_RESULT + 1)
    if found is None or len(found[0]) > MAX_RESULT:
        return None
    return found[0].decode(errors="replace"), found[1].st_uid


def _failed(lab: str, reason: str) -> GradingResult:
    # Imported here: the evaluation's modules are the child's, not the worker's (their
    # import would land in a worker's first submission).
    from autograder.grading.evaluate import failed_result
    from autograder.rubric import load_rubric

    return failed_result(load_rubric(lab), "unknown", reason)


def _evaluate(
    request: dict[str, Any], account: Any, child: Child
) -> tuple[dict[str, Any], Callable[[], None]]:
    """One evaluation, handed to ``child`` (left waiting when there are no files to read),
    waited for and stored; the reply for the client, and what removes the child's cgroup
    and folder (after the reply: the client need not wait for it)."""
    from autograder.grading.artifacts import files_problem
    from autograder.grading.evaluate import failed_result
    from autograder.rubric import load_rubric

    artifacts = Path(request["artifacts"])
    problem = files_problem(artifacts)
    if problem is not None:
        # Nothing to read: the result is known without the child.
        result = failed_result(
            load_rubric(request["lab"]),
            _source(request["lab"]),
            f"the files the notebook left for grading were not read: {problem}",
        )
        write_fresh(request["out"], result.to_json())
        return {"status": "ok", "exit": 0}, lambda: None
    work = _private_copy(artifacts, account)

    def clean_up() -> None:
        child.remove_cgroup()
        remove_tree(work)

    try:
        handed = child.hand({"lab": request["lab"], "work": str(work)})
        timeout = float(request.get("timeout", 600)) if handed else 60.0
        exit_code = _wait(child.pid, timeout)
        found = _read_result(work) if exit_code == 0 and handed else None
        if found is not None:
            write_fresh(request["out"], found[0])
    except BaseException:
        clean_up()
        raise
    status = "timeout" if exit_code is None else "ok" if found is not None else "failed"
    return {"status": status, "exit": exit_code, "uid": found[1] if found else None}, clean_up


def _source(lab: str) -> str:
    from autograder.data.loaders import data_source
    from autograder.rubric import load_rubric

    try:
        return data_source(load_rubric(lab).dataset)
    except Exception:
        return "unknown"


def serve(labs: list[str], requests: IO[str], replies: IO[str]) -> None:
    """Answer one JSON request per line until ``requests`` closes."""
    import h5py  # noqa: F401  (read by the child, which may not import from disk)
    import keras  # noqa: F401  (the point: imported once, before any fork)

    from autograder.data.loaders import DATA_DIR_ENV, data_dir, keep_loaded, load_heldout
    from autograder.grading import evaluate  # noqa: F401
    from autograder.grading.metrics import student_view, train_stats
    from autograder.grading.tf_data import untune_tf_data
    from autograder.rubric import load_rubric
    from autograder.sandbox.accounts import evaluator_account

    untune_tf_data()  # its children predict beside the kernels' training

    # Pinned before any child switches accounts: without $HOME, "~" would become the
    # evaluator account's home there, not the grader's.
    os.environ[DATA_DIR_ENV] = str(data_dir())
    keep_loaded()
    account = evaluator_account()
    loaded: set[str] = set()

    def preload(lab: str) -> None:
        # Decoded here, before forking, so every child shares the arrays (numpy only: no
        # TensorFlow op runs in this process) and none needs to read the data folder.
        if lab in loaded:
            return
        loaded.add(lab)
        rubric = load_rubric(lab)
        with contextlib.suppress(Exception):  # a missing data set is reported per submission
            _source(lab)
            load_heldout(rubric.dataset, **rubric.preprocess.load)
            student_view(rubric)
            if rubric.preprocess.normalize:
                train_stats(rubric)

    for lab in labs:
        preload(lab)
    own = tuple(_fileno(stream) for stream in (requests, replies))
    serial = itertools.count()
    spare: Child | None = None

    def fork() -> Child:
        return fork_child(frozenset(loaded), account, next(serial), own)

    try:
        for line in requests:
            request = json.loads(line)
            if request.get("prepare"):
                spare = spare or fork()
                continue
            if request.get("ping"):
                replies.write(json.dumps({"status": "ready"}) + "\n")
                replies.flush()
                continue
            preload(request["lab"])
            if spare is not None and request["lab"] not in spare.labs:
                spare.discard()  # forked before this lab's data was decoded
                spare = None
            child, spare = spare or fork(), None
            try:
                reply, clean_up = _evaluate(request, account, child)
            finally:
                if child.waiting:  # not needed (nothing to read): the next one's
                    spare = child
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
            clean_up()
    finally:
        if spare is not None:
            spare.discard()


def _fileno(stream: IO[str]) -> int:
    try:
        return stream.fileno()
    except (OSError, ValueError):  # not a file (a test's StringIO)
        return -1


def main(argv: list[str] | None = None) -> int:
    labs = list(sys.argv[1:] if argv is None else argv)
    # Replies go on a private copy of stdout; anything printed while evaluating goes to stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    serve(labs, sys.stdin, replies)
    replies.flush()
    # Nothing here needs the interpreter's teardown (TensorFlow's takes a second or more,
    # at the end of every worker): each evaluation's child was waited for, its folder removed.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
