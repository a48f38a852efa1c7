"""A memory, a pids and a cpu control group for one kernel: a hard cap that counts
everything, and one share of the processors however many threads it starts.

The watchdog sums resident memory, which misses what a notebook keeps in memory-backed
files (tmpfs, ``/dev/shm``, ``memfd``) and page cache. A memory cgroup charges all of it to
the group that touched it, and the kernel's OOM killer stops the group at the limit; a pids
cgroup caps processes and threads per kernel, not per account. A cpu group makes the
scheduler share the processors between groups, not threads: a notebook that starts many
busy threads or processes slows itself, not the notebook graded beside it, whose time
limit keeps counting. While the student's cells run, the group weighs a quarter of a
grader process (``KERNEL_CPU_WEIGHT``, set by ``GraderExecute``): the grader's short steps
between notebooks do not wait behind training. Each kernel's groups are children of the
grader's own (so the host's accounting of the grader still holds) and are joined by the
kernel's launcher before it drops root.

cgroup v1 (``/sys/fs/cgroup/memory``, ``/sys/fs/cgroup/pids``, ``/sys/fs/cgroup/cpu``, as
on these machines) and v2 (where the grader's group delegates ``memory`` and ``pids``, and
``cpu`` for the share) are both handled; elsewhere, or without root,
:meth:`KernelCgroup.create` returns None and the watchdog is the limit. The cpu group is
made where it can be, and its absence alone takes nothing else away.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EVALUATION_CGROUP", "PREFIX", "KernelCgroup", "cgroup_unavailable"]

log = logging.getLogger(__name__)

_ROOT = Path("/sys/fs/cgroup")
PREFIX = "autograder-"
EVALUATION_CGROUP = "evaluation-"  # + the evaluator server's pid: removed once it is gone
_WHY_NOT: dict[str, str] = {}


def _own_paths() -> dict[str, str]:
    """The grader's own group per v1 controller, and per "" for the v2 hierarchy."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path
    return paths


def cgroup_unavailable() -> str | None:
    """Why kernels get no cgroup here (None when they do)."""
    return _WHY_NOT.get("reason")


def _cpu_group_v1(own: dict[str, str], name: str) -> Path | None:
    """The kernel's v1 cpu group, where the host mounts the controller; None where it
    cannot be made."""
    if "cpu" not in own or not (_ROOT / "cpu" / "cpu.shares").exists():
        return None
    folder = _ROOT / "cpu" / own["cpu"].lstrip("/") / f"{PREFIX}{name}"
    try:
        folder.mkdir()
    except OSError as exc:
        if "cpu" not in _WHY_NOT:
            _WHY_NOT["cpu"] = f"{type(exc).__name__}: {exc}"
            log.warning("no cpu cgroup for student kernels: %s", _WHY_NOT["cpu"])
        return None
    return folder


@dataclass(frozen=True)
class KernelCgroup:
    """One kernel's groups: ``folders`` (one per hierarchy), the one holding the memory
    files, and the cgroup version."""

    folders: tuple[Path, ...]
    memory: Path
    version: int
    cpu: bool = False  # whether the kernel's threads share the processors as one group

    @classmethod
    def create(
        cls, name: str, *, memory_mb: int, processes: int, cpu_weight: float = 1.0
    ) -> KernelCgroup | None:
        """The groups, or None where they cannot be made. ``cpu_weight``: the cpu group's
        weight as a share of one grader process's (``KERNEL_CPU_WEIGHT`` for kernels)."""
        if os.geteuid() != 0 or not _ROOT.is_dir() or "reason" in _WHY_NOT:
            return None
        own = _own_paths()
        made: list[Path] = []
        try:
            limit = str(memory_mb * 2**20)
            if (_ROOT / "memory" / "memory.limit_in_bytes").exists() and "pids" in own:
                memory = _ROOT / "memory" / own["memory"].lstrip("/") / f"{PREFIX}{name}"
                pids = _ROOT / "pids" / own["pids"].lstrip("/") / f"{PREFIX}{name}"
                for folder in (memory, pids):
                    folder.mkdir()
                    made.append(folder)
                (memory / "memory.limit_in_bytes").write_text(limit)
                memsw = memory / "memory.memsw.limit_in_bytes"
                if memsw.exists():  # swap counts too
                    memsw.write_text(limit)
                (pids / "pids.max").write_text(str(processes))
                cpu = _cpu_group_v1(own, name)
                group = cls((memory, pids, *([cpu] if cpu else [])), memory, 1, cpu is not None)
                group.weigh(cpu_weight)
                return group
            parent = _ROOT / own.get("", "/").lstrip("/")
            delegated = (parent / "cgroup.subtree_control").read_text().split()
            if not {"memory", "pids"} <= set(delegated):
                raise OSError(f"memory and pids are not delegated to {parent}")
            folder = parent / f"{PREFIX}{name}"
            folder.mkdir()
            made.append(folder)
            (folder / "memory.max").write_text(limit)
            with contextlib.suppress(OSError):
                (folder / "memory.swap.max").write_text("0")
            (folder / "pids.max").write_text(str(processes))
            group = cls((folder,), folder, 2, "cpu" in delegated)
            group.weigh(cpu_weight)
            return group
        except (OSError, KeyError) as exc:
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            _WHY_NOT["reason"] = f"{type(exc).__name__}: {exc}"
            log.warning(
                "no memory cgroup for student kernels (%s): memory is limited by the "
                "watchdog's resident-memory count only",
                _WHY_NOT["reason"],
            )
            return None

    def weigh(self, weight: float) -> None:
        """The cpu group's weight, as a share of one grader process's (v1 ``cpu.shares``
        1024, v2 ``cpu.weight`` 100); left as it was where it cannot be set."""
        if not self.cpu:
            return
        name, value = (
            ("cpu.shares", max(2, round(1024 * weight)))
            if self.version == 1
            else ("cpu.weight", max(1, round(100 * weight)))
        )
        try:
            (self.folders[-1] / name).write_text(str(value))
        except OSError as exc:
            log.warning("the cpu weight of %s could not be set: %s", self.folders[-1], exc)

    @classmethod
    def _named(cls, prefix: str) -> list[Path]:
        """The groups named ``PREFIX + prefix + ...``, in every hierarchy."""
        own = _own_paths()
        parents = [_ROOT / c / own[c].lstrip("/") for c in ("memory", "pids", "cpu") if c in own]
        parents.append(_ROOT / own.get("", "/").lstrip("/"))
        found = [f for p in parents if p.is_dir() for f in p.glob(f"{PREFIX}{prefix}*")]
        return [f for f in found if f.is_dir()]

    @classmethod
    def named_anywhere(cls, prefix: str) -> list[Path]:
        """The groups named ``PREFIX + prefix + ...`` wherever they are in the hierarchies: a
        grader that ran in another group (another session or service) made its kernels'
        groups there. One walk of every hierarchy: for a sweep, not for each kernel."""
        roots = [_ROOT / c for c in ("memory", "pids", "cpu") if (_ROOT / c).is_dir()]
        if (_ROOT / "cgroup.controllers").exists():
            roots.append(_ROOT)  # v2
        found: set[Path] = set()
        for root in {r.resolve() for r in roots}:
            for folder, dirs, _ in os.walk(root, onerror=lambda _: None):
                found.update(Path(folder, d) for d in dirs if d.startswith(PREFIX + prefix))
                # Kernels' and evaluations' groups have no groups inside.
                dirs[:] = [d for d in dirs if not d.startswith(PREFIX)]
        return sorted(found)

    @classmethod
    def remove_stale(cls, prefix: str) -> bool:
        """Remove the groups named ``PREFIX + prefix + ...`` (left by a grader that was
        killed), killing what is still in them; False if one stays."""
        return cls.remove_folders(cls._named(prefix))

    @classmethod
    def remove_folders(cls, folders: list[Path]) -> bool:
        """Remove these groups, killing what is still in them; False if one stays."""
        return not folders or cls(tuple(folders), folders[0], 1).remove()

    @classmethod
    def remove_orphans(cls, prefix: str) -> None:
        """Remove the groups named ``PREFIX + prefix + <pid>-...`` whose maker, process
        ``pid``, is gone (an evaluator server that was killed), with what is in them;
        wherever they are, as a killed grader may have run in another group (another
        session or service) of this machine's PID namespace."""
        import psutil

        by_name: dict[str, list[Path]] = {}  # one group: a folder in each hierarchy
        for folder in cls.named_anywhere(prefix):
            by_name.setdefault(folder.name[len(PREFIX) :], []).append(folder)
        for name, folders in sorted(by_name.items()):
            pid = name[len(prefix) :].split("-")[0]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                cls.remove_folders(folders)

    @property
    def procs_files(self) -> list[str]:
        """What the launcher writes its pid into, to join the groups."""
        return [str(folder / "cgroup.procs") for folder in self.folders]

    def oom_kills(self) -> int:
        """How many processes the OOM killer ended in this group (the memory limit)."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in (self.memory / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def peak_mb(self) -> float | None:
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int((self.memory / name).read_text()) / 2**20
        except (OSError, ValueError):
            return None

    def remove(self, timeout: float = 10.0) -> bool:
        """Kill what is left in the groups and remove them; False if one stays."""
        deadline = time.monotonic() + timeout
        left = list(self.folders)
        pause = 0.002  # a killed process leaves its group within milliseconds, mostly
        while left and time.monotonic() < deadline:
            for folder in list(left):
                try:
                    pids = (folder / "cgroup.procs").read_text().split()
                except FileNotFoundError:
                    left.remove(folder)
                    continue
                except OSError:
                    pids = []
                for pid in pids:
                    with contextlib.suppress(OSError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                try:
                    folder.rmdir()
                    left.remove(folder)
                except OSError:
                    pass
            if left:
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
        if left:
            log.warning("could not remove the kernel's cgroups %s", left)
        return not left
