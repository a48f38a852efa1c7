"""A spare kernel: one started ahead, in a sandbox of its own, for a batch worker's next
notebook.

A batch worker grades one notebook after another; starting the next kernel while this
notebook is evaluated hides its start-up (a second of imports). A spare fits only a
notebook with the same limits, kernel, arguments and environment (all fixed when it
started); any other is stopped and the notebook starts its own kernel as usual. At most one
per process, stopped at exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from autograder._runtime import at_exit
from autograder.sandbox.kernel import KernelSandbox, SandboxedKernelManager, kernel_exit_status
from autograder.settings import Limits

__all__ = ["discard_spare_kernel", "start_spare_kernel", "take_spare_kernel"]

log = logging.getLogger(__name__)


@dataclass
class _Spare:
    km: SandboxedKernelManager
    box: KernelSandbox
    key: tuple[Any, ...]


_SPARE: list[_Spare] = []  # at most one per process


def _spare_key(limits: Limits, kernel_name: str, arguments: list[str]) -> tuple[Any, ...]:
    # The kernel's environment is fixed when it starts: a spare fits only the same one.
    return (limits, kernel_name, tuple(arguments), tuple(sorted(os.environ.items())))


def start_spare_kernel(km: SandboxedKernelManager, limits: Limits, arguments: list[str]) -> None:
    """Start ``km``'s kernel now, in a sandbox of its own, for this process's next notebook
    (:func:`take_spare_kernel`): a batch worker grades one notebook after another, and the
    next kernel's start-up (a second of imports) then overlaps this one's evaluation."""
    discard_spare_kernel()
    box = KernelSandbox(limits)
    km.network, km.limits, km.sandbox = limits.network, limits, box
    try:
        from jupyter_core.utils import run_sync

        run_sync(km.start_kernel)(cwd=str(box.empty_workdir()), extra_arguments=arguments)
    except Exception as exc:  # no spare: the next notebook starts its kernel as usual
        log.warning("could not start a spare kernel: %s", exc)
        _stop(km, box)
        return
    if not _SPARE_EXIT:
        _SPARE_EXIT.append(True)
        at_exit(discard_spare_kernel)
    _SPARE.append(_Spare(km, box, _spare_key(limits, km.kernel_name, arguments)))


def take_spare_kernel(
    limits: Limits, kernel_name: str, arguments: list[str]
) -> tuple[SandboxedKernelManager, KernelSandbox] | None:
    """The spare kernel, when there is one, alive, started for the same limits, kernel and
    environment; the caller shuts it down and releases its sandbox."""
    if not _SPARE:
        return None
    spare = _SPARE.pop()
    alive = spare.km.has_kernel and kernel_exit_status(spare.km) is None
    if not alive or spare.key != _spare_key(limits, kernel_name, arguments):
        _stop(spare.km, spare.box)
        return None
    return spare.km, spare.box


def discard_spare_kernel() -> None:
    """Stop the spare kernel, if there is one, and release its sandbox."""
    while _SPARE:
        spare = _SPARE.pop()
        _stop(spare.km, spare.box)


_SPARE_EXIT: list[bool] = []


def _stop(km: SandboxedKernelManager, box: KernelSandbox) -> None:
    """Synchronous: also runs at exit, when no event loop may be left."""
    process = getattr(getattr(km, "provisioner", None), "process", None)
    with contextlib.suppress(Exception):
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    with contextlib.suppress(Exception):
        km.cleanup_connection_file()
    # Closed now, not left to the garbage collector, whose end of the manager's context
    # waits for ever on a socket it cannot close (seen once a client of our own had used it).
    with contextlib.suppress(Exception):
        km._close_control_socket()
    box.release()  # the account's processes, the PID namespace's init: all ended
