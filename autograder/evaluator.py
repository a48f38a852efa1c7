"""A warm evaluator: TensorFlow imported once, one forked child per submission.

Evaluating a saved model in a fresh interpreter costs about 5 s of TensorFlow import per
submission. The batch grader instead keeps one server process per worker that has imported
TensorFlow and decoded the held-out data (without running any TensorFlow op, so forking
stays safe) and forks a child for each evaluation. Each child starts from that clean state
and exits when done, so nothing one submission's model does can reach the next one, and
the grade is still computed outside the student's kernel.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from .fstree import remove_tree, write_fresh
from .results import GradingResult

__all__ = ["Evaluator"]

_QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


class Evaluator:
    """Client of one evaluator server (``python -m autograder.evaluator``)."""

    def __init__(self, labs: tuple[str, ...] = ()) -> None:
        self.labs = labs
        self._proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "autograder.evaluator", *self.labs],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env={**os.environ, **_QUIET},
            )
        return self._proc

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

    def evaluate(self, lab: str, artifacts: Path, *, timeout: float = 600) -> GradingResult:
        """Grade one submission's artifacts in a forked child; failures become results."""
        from .evaluate import failed_result, grade_in_subprocess
        from .rubric import load_rubric

        out = artifacts / "result.json"
        remove_tree(out)  # whatever stands there, the child writes a new file
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        request = {"lab": lab, "artifacts": str(artifacts), "out": str(out), "timeout": timeout}
        try:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            # The server itself is gone: grade this one the slow way, restart for the next.
            self.close()
            return grade_in_subprocess(lab, artifacts, timeout=timeout)
        reply = json.loads(line)
        if reply["status"] == "timeout":
            return failed_result(
                load_rubric(lab),
                "unknown",
                f"grader timed out after {timeout:.0f} s evaluating the model",
            )
        if reply["status"] != "ok" or not out.is_file():
            return failed_result(
                load_rubric(lab), "unknown", f"grader failed (exit {reply.get('exit')})"
            )
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
            self._proc = None

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait(pid: int, timeout: float) -> int | None:
    """The child's exit status, or None after killing it at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.01)


def _child(request: dict[str, Any]) -> int:
    from .evaluate import evaluate_artifacts

    result = evaluate_artifacts(request["lab"], Path(request["artifacts"]))
    write_fresh(request["out"], result.to_json())
    return 0


def serve(labs: list[str], requests: IO[str], replies: IO[str]) -> None:
    """Answer one JSON request per line until ``requests`` closes."""
    import keras  # noqa: F401  (the point: imported once, before any fork)

    from . import evaluate  # noqa: F401
    from .datasets import keep_loaded, load_heldout
    from .evaluate import _train_stats
    from .rubric import load_rubric

    keep_loaded()
    loaded: set[str] = set()

    def preload(lab: str) -> None:
        # Decoded here, before forking, so every child shares the arrays (numpy only: no
        # TensorFlow op runs in this process).
        if lab in loaded:
            return
        loaded.add(lab)
        rubric = load_rubric(lab)
        with contextlib.suppress(Exception):  # a missing data set is reported per submission
            load_heldout(rubric.dataset, **rubric.preprocess.load)
            if rubric.preprocess.normalize:
                _train_stats(rubric)

    for lab in labs:
        preload(lab)
    for line in requests:
        request = json.loads(line)
        if request.get("ping"):
            replies.write(json.dumps({"status": "ready"}) + "\n")
            replies.flush()
            continue
        preload(request["lab"])
        pid = os.fork()
        if pid == 0:
            os.setsid()  # its own process group: a timeout kills everything it started
            code = 1
            try:
                code = _child(request)
            except BaseException as exc:
                print(f"evaluation failed: {exc!r}", file=sys.stderr)
            finally:
                os._exit(code)
        exit_code = _wait(pid, float(request.get("timeout", 600)))
        status = "timeout" if exit_code is None else "ok" if exit_code == 0 else "failed"
        replies.write(json.dumps({"status": status, "exit": exit_code}) + "\n")
        replies.flush()


def main(argv: list[str] | None = None) -> int:
    labs = list(sys.argv[1:] if argv is None else argv)
    # Replies go on a private copy of stdout; anything printed while evaluating goes to stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    serve(labs, sys.stdin, replies)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
