"""Pieces of the formgrader's Jupyter server (loaded by name from its command line): no
kernels, and its graders' steps taken in turn with the batch and grade-on-submit."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado import web

__all__ = ["WRITING_STEPS", "NoKernels", "in_turn"]

# What the formgrader's buttons run that rewrites a course's grading folders.
WRITING_STEPS = ("collect", "autograde", "generate_feedback", "release_feedback")


class NoKernels(AsyncMappingKernelManager):
    """A kernel manager that starts no kernel: the formgrader's server needs none, and a
    kernel there would run code as the grader account for whoever reaches the page."""

    async def start_kernel(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
        raise web.HTTPError(403, "kernels are off on the formgrader's server")


def in_turn(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step``, a method of nbgrader's ``NbGraderAPI``, run holding its course's writing
    lock (:func:`autograder.course_lock.writing_grades`)."""
    from autograder.course_lock import writing_grades

    @functools.wraps(step)
    def run(api: Any, *args: Any, **kwargs: Any) -> Any:
        with writing_grades(Path(api.coursedir.root)):
            return step(api, *args, **kwargs)

    run.in_turn = True  # type: ignore[attr-defined]
    return run


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "autograder.hub.server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """The formgrader's buttons (collect, autograde, feedback) wait while the batch or
    grade-on-submit writes the course's grades, and those wait for them. Only in this
    server's process: elsewhere the callers take the lock themselves."""
    from nbgrader.apps.api import NbGraderAPI

    for name in WRITING_STEPS:
        step = getattr(NbGraderAPI, name)
        if not getattr(step, "in_turn", False):
            setattr(NbGraderAPI, name, in_turn(step))
