"""The grade-on-submit service's queue and the statuses students see.

A submission is found in the exchange's ``inbound`` folder; what waits is the pair
(student, lab), not each submission: a resubmission while the pair waits joins it (collect
takes the newest), so one student's ten resubmissions make at most one grading behind the
running one. The next pair to grade belongs to the student who has been graded least, then
to the one who waited longest: a class's first submissions are not held up by one student's
resubmissions.

Statuses are frozen records kept in one JSON file in the service's state folder, so they
survive a restart of the hub; entries of ``inbound`` already seen are kept there too, so a
restart grades only what arrived while it was down.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal

from autograder.fstree import write_fresh

__all__ = ["STATES", "FairQueue", "SubmissionStatus"]

State = Literal["queued", "running", "graded", "failed", "off"]
STATES: Final[tuple[State, ...]] = ("queued", "running", "graded", "failed", "off")


@dataclass(frozen=True)
class SubmissionStatus:
    """Where one student's latest submission of one lab stands."""

    student: str
    lab: str
    state: State
    submitted_at: float  # when the service saw it (epoch seconds)
    submissions: int = 1  # seen by the service, this one included
    started_at: float | None = None
    finished_at: float | None = None
    score: float | None = None
    max_score: float | None = None
    late_penalty: float | None = None
    reason: str = ""  # why it failed, or why it is not graded on submit

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SubmissionStatus:
        return cls(**data)


class FairQueue:
    """Pairs waiting to be graded, with every pair's status; safe across threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Condition()
        self._status: dict[tuple[str, str], SubmissionStatus] = {}
        self._seen: set[str] = set()
        self._graded: dict[str, int] = {}  # gradings started, per student
        self.started: list[tuple[str, str, float]] = []  # every grading, in order
        self._load()

    # ---------------------------------------------------------------- persistence
    def _load(self) -> None:
        if not self.path.is_file():
            return
        data = json.loads(self.path.read_text())
        for raw in data.get("status", []):
            status = SubmissionStatus.from_json(raw)
            if status.state == "running":  # the service stopped while it ran: again
                status = replace(status, state="queued", started_at=None)
            self._status[(status.student, status.lab)] = status
        self._seen = set(data.get("seen", []))
        self._graded = {str(k): int(v) for k, v in data.get("graded", {}).items()}
        self.started = [(str(a), str(b), float(c)) for a, b, c in data.get("started", [])]

    def _save(self) -> None:
        data = {
            "status": [s.to_json() for s in self._status.values()],
            "seen": sorted(self._seen),
            "graded": self._graded,
            "started": self.started[-10_000:],
        }
        staged = self.path.with_name(f".{self.path.name}.new")
        write_fresh(staged, json.dumps(data))
        staged.replace(self.path)

    # ---------------------------------------------------------------- producer
    def unseen(self, entries: set[str]) -> set[str]:
        with self._lock:
            return entries - self._seen

    def ignore(self, entry: str) -> None:
        """An entry that is nobody's submission here (another course's lab, a name that is
        not a student's, a folder filed under someone else's name)."""
        with self._lock:
            self._seen.add(entry)
            self._save()

    def submitted(
        self, student: str, lab: str, entry: str, *, grade: bool, reason: str = ""
    ) -> None:
        """A new entry of ``inbound``: queue its pair, or join the pair already waiting.
        ``grade`` False (grading on submit is off for the lab) records it as ``off``."""
        now = time.time()
        with self._lock:
            self._seen.add(entry)
            key = (student, lab)
            old = self._status.get(key)
            count = old.submissions + 1 if old else 1
            if not grade:
                self._status[key] = SubmissionStatus(student, lab, "off", now, count, reason=reason)
            elif old is not None and old.state == "queued":
                self._status[key] = replace(old, submissions=count)
            else:
                self._status[key] = SubmissionStatus(student, lab, "queued", now, count)
            self._save()
            self._lock.notify_all()

    # ---------------------------------------------------------------- consumer
    def next(self, timeout: float) -> tuple[str, str] | None:
        """The next pair to grade, marked running; None when nothing waits in ``timeout``."""
        with self._lock:
            self._lock.wait_for(self._waiting, timeout=timeout)
            waiting = self._waiting()
            if not waiting:
                return None
            status = min(waiting, key=lambda s: (self._graded.get(s.student, 0), s.submitted_at))
            self._graded[status.student] = self._graded.get(status.student, 0) + 1
            self.started.append((status.student, status.lab, time.time()))
            self._status[(status.student, status.lab)] = replace(
                status, state="running", started_at=time.time()
            )
            self._save()
            return status.student, status.lab

    def _waiting(self) -> list[SubmissionStatus]:
        return [s for s in self._status.values() if s.state == "queued"]

    def finished(self, student: str, lab: str, **result: Any) -> None:
        """The pair's grading ended: ``state`` graded or failed, with score or reason. A
        pair resubmitted while it ran stays queued for another round."""
        with self._lock:
            key = (student, lab)
            current = self._status[key]
            done = replace(current, finished_at=time.time(), **result)
            if current.state == "queued":  # resubmitted meanwhile: keep it waiting
                done = replace(done, state="queued")
            self._status[key] = done
            self._save()

    # ---------------------------------------------------------------- readers
    def status(self, student: str | None = None) -> list[SubmissionStatus]:
        """Every status, or one student's, oldest first."""
        with self._lock:
            found = [s for s in self._status.values() if student in (None, s.student)]
        return sorted(found, key=lambda s: (s.submitted_at, s.student, s.lab))
