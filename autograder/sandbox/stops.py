"""Why a notebook stopped, in words a student can read, and the record that keeps it.

A limit that stops a notebook must cost only its grade, with a reason: the grader writes
which limit it was to the artifacts folder (:func:`record_stop`) and the evaluation reads it
back (:func:`read_stop`) to tell the student, since a stopped kernel leaves no capture.
The messages for each limit and for a kernel that died live here too, so that the sandbox,
the watchdog and the grader word them the same way. Time per cell is nbclient's own
``timeout`` (``GraderExecute`` sets it, with :func:`cell_timeout_message`).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Mapping
from pathlib import Path

from autograder.fstree import write_fresh
from autograder.settings import Limits

__all__ = [
    "LIMIT_FILE",
    "cell_timeout_message",
    "death_reason",
    "memory_limit_message",
    "output_limit_message",
    "read_stop",
    "record_stop",
]

LIMIT_FILE = "limit.json"


def cell_timeout_message(limits: Limits) -> str:
    return (
        f"time limit exceeded: this cell ran longer than {limits.cell_timeout_s} s "
        "and was interrupted"
    )


def record_stop(
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


def read_stop(artifacts: Path) -> str | None:
    """The one-line reason recorded by :func:`record_stop`, if any."""
    try:
        data = json.loads((artifacts / LIMIT_FILE).read_text())
    except (OSError, ValueError):
        return None
    reason = data.get("reason") if isinstance(data, dict) else None
    return reason if isinstance(reason, str) and reason else None


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
