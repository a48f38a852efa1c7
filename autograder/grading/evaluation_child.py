"""One evaluation's process: forked by the evaluator server before its submission comes.

The server (:mod:`autograder.grading.evaluation_server`) forks the child for its next
evaluation ahead of time (:func:`fork_child`). The child joins a memory, pids and cpu cgroup
of its own, sets resource limits, switches to the evaluator account (``autograder-evaluator``,
where the grader runs as root), and then runs a two-unit model through the path an
evaluation takes (Keras's eager calls: TensorFlow's first ops, its thread pools, the ops'
kernels), all before any submission is known. Then it waits for one request on a pipe.
That warm-up is about half of a small model's evaluation (0.1 s of 0.2 s of CPU); spent
ahead, it runs while the worker executes the next notebook instead of between a notebook
and its grade. The child reads nothing the kernel wrote before it gives up root (the server
copies the capture's files into a folder of the account's, then hands the child the
request), evaluates one submission at most, and exits when done, or unused when the server
closes the pipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autograder.fstree import write_fresh

__all__ = ["MAX_RESULT", "RESULT", "Child", "fork_child"]

RESULT = "result.json"
MAX_RESULT = 16 * 2**20  # a result is a few KiB; a larger one is not read


@dataclass
class Child:
    """A forked evaluation process, waiting for its request (``requests``: the pipe's write
    end, -1 once handed over)."""

    pid: int
    requests: int
    cgroup: Any  # its KernelCgroup, or None
    labs: frozenset[str]  # the labs whose data it holds (the server's, when forked)

    def hand(self, request: dict[str, Any]) -> bool:
        """Give the child its one request; False if it is gone (it failed to start)."""
        fd, self.requests = self.requests, -1
        if self.cgroup is not None:  # no longer ahead of time: the grader's own weight
            self.cgroup.weigh(1.0)
        try:
            os.write(fd, (json.dumps(request) + "\n").encode())
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    @property
    def waiting(self) -> bool:
        """Not handed a request yet."""
        return self.requests >= 0

    def discard(self) -> None:
        """A child still waiting, not needed: its pipe closed (it exits on reading
        nothing), waited for, its cgroup removed."""
        if self.waiting:
            os.close(self.requests)
            self.requests = -1
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        self.remove_cgroup()

    def remove_cgroup(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None


def fork_child(labs: frozenset[str], account: Any, serial: int, close: tuple[int, ...]) -> Child:
    """A child for the next evaluation of one of ``labs``, warming up; ``close``: the
    server's own descriptors (its request and reply streams), which the child must not keep
    open (the worker sees the server's end by its replies' end)."""
    from autograder.sandbox.cgroup import EVALUATION_CGROUP, KernelCgroup
    from autograder.settings import KERNEL_CPU_WEIGHT, Limits

    cgroup = None
    if account is not None:
        # Named after the server: remove_stale_temps removes those of a server gone.
        name = f"{EVALUATION_CGROUP}{os.getpid()}-{serial}"
        # Its warm-up weighs no more than a notebook's cells, beside which it runs.
        cgroup = KernelCgroup.create(
            name,
            memory_mb=Limits.from_env().memory_mb,
            processes=512,
            cpu_weight=KERNEL_CPU_WEIGHT,
        )
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()  # its own process group: a timeout kills everything it started
        code = 1
        try:
            os.close(write_end)
            for fd in close:
                with contextlib.suppress(OSError):
                    os.close(fd)
            code = _run(read_end, labs, account, cgroup)
        except BaseException as exc:
            print(f"evaluation failed: {exc!r}", file=sys.stderr)
        finally:
            os._exit(code)
    os.close(read_end)
    return Child(pid, write_end, cgroup, labs)


def _become(account: Any, cgroup: Any) -> None:
    """In the child: its own cgroup, resource limits, then the evaluator account."""
    if cgroup is not None:
        for procs in cgroup.procs_files:
            Path(procs).write_text(str(os.getpid()))
    for res, value in (
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, MAX_RESULT),
        (resource.RLIMIT_NOFILE, 1024),
    ):
        resource.setrlimit(res, (value, value))
    if account is not None:
        os.setgroups([])
        os.setresgid(account.gid, account.gid, account.gid)
        os.setresuid(account.uid, account.uid, account.uid)
        if os.getuid() == 0 or os.geteuid() == 0:
            raise RuntimeError("could not give up root")


def _warm_up() -> None:
    """What a process's first evaluation pays once, on a model of its own (named: Keras's
    automatic names, and so the submission's, stay as a fresh process has them)."""
    import keras
    import numpy as np

    model = keras.Sequential(
        [keras.Input((4,), name="warm_up_input"), keras.layers.Dense(2, name="warm_up_dense")],
        name="warm_up",
    )
    keras.ops.convert_to_numpy(model(np.zeros((2, 4), "float32"), training=False))


def _run(requests: int, labs: frozenset[str], account: Any, cgroup: Any) -> int:
    from autograder.data.loaders import only_kept
    from autograder.grading.evaluate import evaluate_artifacts
    from autograder.rubric import load_rubric

    only_kept()
    # Read now: the rubrics' folder may be closed to the account.
    rubrics = {lab: load_rubric(lab) for lab in labs}
    _become(account, cgroup)
    with contextlib.suppress(Exception):  # the evaluation then pays for it, nothing worse
        _warm_up()
    with os.fdopen(requests) as pipe:
        line = pipe.readline()
    if not line:  # not needed after all
        return 0
    request = json.loads(line)
    work = Path(request["work"])
    os.chdir(work)
    result = evaluate_artifacts(request["lab"], work, rubrics[request["lab"]])
    write_fresh(work / RESULT, result.to_json())
    return 0
