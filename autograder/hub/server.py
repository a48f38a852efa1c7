"""Pieces of the formgrader's Jupyter server (loaded by name from its command line)."""

from __future__ import annotations

from typing import Any

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado import web

__all__ = ["NoKernels"]


class NoKernels(AsyncMappingKernelManager):
    """A kernel manager that starts no kernel: the formgrader's server needs none, and a
    kernel there would run code as the grader account for whoever reaches the page."""

    async def start_kernel(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
        raise web.HTTPError(403, "kernels are off on the formgrader's server")
