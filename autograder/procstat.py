"""Processes as ``/proc/<pid>/stat`` shows them: one read a process, no objects.

The watchdog polls a kernel's tree five times a second and the hub's supervisor its
descendants until they are gone; psutil's ``children()`` reads every process's stat file
for each call, and its per-process calls read more files again. Here one pass reads each
wanted process's stat file once, and the tree is derived from that table. Linux only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["PAGE", "Stat", "descendants", "read_stat", "stat_table"]

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Stat:
    """The fields of one process's stat line that the grader reads (``start``: clock ticks
    after boot, which tells a reused pid from the process that had it)."""

    pid: int
    ppid: int
    state: str
    threads: int
    start: int
    rss_pages: int

    @property
    def running(self) -> bool:
        """Not ended: a process whose first thread ended while others run on shows as a
        zombie (``Z``) too, and is still running."""
        return self.state not in ("Z", "X") or (self.state == "Z" and self.threads > 1)


def read_stat(pid: int) -> Stat | None:
    """The process's stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces or parentheses itself.
    fields = line[line.rindex(")") + 2 :].split()
    return Stat(pid, int(fields[1]), fields[0], int(fields[17]), int(fields[19]), int(fields[21]))


def stat_table(pids: Iterable[int] | None = None) -> dict[int, Stat]:
    """Each of ``pids`` still there (every process, when None), by pid."""
    if pids is None:
        pids = (int(e.name) for e in os.scandir("/proc") if e.name.isdigit())
    table = {}
    for pid in pids:
        stat = read_stat(pid)
        if stat is not None:
            table[pid] = stat
    return table


def descendants(table: dict[int, Stat], pid: int) -> list[int]:
    """The processes of ``table`` under ``pid`` (children, theirs, ...), nearest first."""
    children: dict[int, list[int]] = {}
    for child, stat in table.items():
        children.setdefault(stat.ppid, []).append(child)
    found: list[int] = []
    seen = {pid}  # a pid reused while the table was read could close a loop
    todo = list(children.get(pid, ()))
    while todo:
        p = todo.pop(0)
        if p in seen:
            continue
        seen.add(p)
        found.append(p)
        todo.extend(children.get(p, ()))
    return found
