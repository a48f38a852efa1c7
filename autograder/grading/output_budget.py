"""The output a notebook may leave: weighed as it would be stored, capped per notebook.

A student's kernel decides what it prints; the grader decides what it keeps. Each message's
whole content counts (text, data, display metadata, error names) plus a fixed cost per
output, display updates included. Past the cap nothing more is kept but one note per cell
and, per cell, one shortened error: nbgrader scores a cell by whether it failed.
"""

from __future__ import annotations

import json
from typing import Any, Final

from nbformat import NotebookNode
from nbformat.v4 import new_output

from autograder.sandbox.stops import output_limit_message
from autograder.settings import Limits

__all__ = ["NOT_OUTPUT", "OutputBudget", "shorten_error"]

_ERROR_CHARS: Final = 10_000
_NAME_CHARS: Final = 200
# What each kept output costs beyond its content (its JSON keys): many empty outputs add up.
_OVERHEAD: Final = 100
# Messages that never become an output (comm messages are not kept: store_widget_state off).
NOT_OUTPUT: Final = frozenset(
    {"status", "execute_input", "clear_output", "execute_reply", "shutdown_reply"}
)


def shorten_error(content: dict[str, Any]) -> None:
    """An error as kept: name, message and at most 200 traceback lines, each cut short."""
    content["ename"] = str(content.get("ename", ""))[:_NAME_CHARS]
    content["evalue"] = str(content.get("evalue", ""))[:_ERROR_CHARS]
    content["traceback"] = [
        str(line)[:_ERROR_CHARS] for line in list(content.get("traceback") or [])[:200]
    ]


class OutputBudget:
    """One notebook's output, counted against ``limits.output_mb``."""

    def __init__(self, limits: Limits) -> None:
        self._cap = limits.output_mb * 2**20
        self._note = f"\n[autograder] {output_limit_message(limits)}\n"
        self._used = 0
        self._cut: set[int] = set()  # cells where output was dropped
        self._error_kept: set[int] = set()  # cells given their one error past the cap

    @property
    def cut_cells(self) -> list[int]:
        """The cells whose output was dropped, in order."""
        return sorted(self._cut)

    def admit(self, kind: str, content: dict[str, Any], cell: NotebookNode, index: int) -> bool:
        """Whether the output of this message (``kind``, ``content``) is kept. When it is
        not, the cell gets the note (once) and, for an error, its one shortened error."""
        if kind == "error":
            shorten_error(content)
        try:
            size = _OVERHEAD + len(json.dumps(content, default=str))
        except (TypeError, ValueError):
            return False
        self._used += size
        if self._used <= self._cap:
            return True
        if index not in self._cut:
            self._cut.add(index)
            cell.setdefault("outputs", []).append(
                new_output("stream", name="stderr", text=self._note)
            )
        if kind == "error" and index not in self._error_kept:
            self._error_kept.add(index)
            evalue = str(content["evalue"])[:_NAME_CHARS]
            cell.outputs.append(
                new_output("error", ename=content["ename"], evalue=evalue, traceback=[])
            )
        return False

    def weigh_added(self, output: NotebookNode) -> None:
        """An output added from outside the messages (nbgrader's error from the execute
        reply): counted, and cut to its name and message when past the cap."""
        self._used += _OVERHEAD + len(json.dumps(output, default=str))
        if self._used > self._cap:
            output.evalue = str(output.get("evalue", ""))[:_NAME_CHARS]
            output.traceback = []
