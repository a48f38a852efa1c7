"""A class's submissions, what a grade depends on, and the record of each outcome.

:func:`find_submissions` lists every submitted notebook with a digest of its files and of the
grader's inputs (:func:`execution_fingerprint`: what decides the execution; and the rubric's
version, which decides the score). A
finished submission leaves ``.autograder-batch.json`` (``STATE_FILE``) in its autograded
folder; :func:`already_graded` tells a later batch to skip it while that digest is unchanged,
so a killed batch resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from autograder.rubric import load_rubric, rubric_version
from autograder.settings import PACKAGE_DIR, STATE_FILE, execution_settings

__all__ = [
    "BatchSummary",
    "OutcomeStatus",
    "Submission",
    "SubmissionOutcome",
    "already_graded",
    "execution_fingerprint",
    "find_submissions",
    "state_path",
]

OutcomeStatus = Literal["graded", "failed", "skipped"]


@dataclass(frozen=True)
class Submission:
    lab: str
    student: str
    notebook: Path  # submitted/<student>/<lab>/<notebook>.ipynb
    digest: str  # of every submitted file of this lab, and the grader's inputs
    # The same without the rubric's scoring: what decides the execution (and its stored
    # model), so that a threshold change re-scores without running the notebook again.
    execution_digest: str = ""


@dataclass(frozen=True)
class SubmissionOutcome:
    lab: str
    student: str
    status: OutcomeStatus
    reason: str = ""
    score: float | None = None
    max_score: float | None = None
    # Seconds: worker_s (in the worker: sanitize_s + execute_s + evaluate_s and the rest),
    # cells_s (the notebook's own cells, as its kernel reported them), replay_s (in the
    # coordinator: nbgrader's autograde replaying the execution); with a worker's first
    # submission, startup_s (its warm-up, before any submission); kernel_ahead: 1 when the
    # notebook ran in a kernel started before it came (0: started for it); kernel_forked: 1
    # when that kernel was forked from the worker's fork server (0: started anew);
    # evaluator_forked: 1 when the worker's evaluator was forked from that server too;
    # server_ahead (with startup_s): 1 when that server was one the coordinator started
    # ahead, before its own imports.
    timing: dict[str, float] = field(default_factory=dict)
    review: tuple[str, ...] = ()  # why it is flagged for review (autograder.grading.review)

    @property
    def overhead_s(self) -> float:
        """Grader time beyond the notebook's own cells."""
        t = self.timing
        return t.get("worker_s", 0.0) - t.get("cells_s", 0.0) + t.get("replay_s", 0.0)

    def overhead_parts(self) -> dict[str, float]:
        """``overhead_s``, by where it went (the parts add up to it): reading and sanitizing,
        the execution beyond the cells (kernel taken, messages, capture, kernel ended and
        its sandbox released), the evaluation, the coordinator's replay, and the rest of
        the worker's time (copying, storing the execution)."""
        t = self.timing
        sanitize, execute, evaluate = (
            t.get(k, 0.0) for k in ("sanitize_s", "execute_s", "evaluate_s")
        )
        return {
            "sanitizing": sanitize,
            "execution beyond the cells": execute - t.get("cells_s", 0.0),
            "evaluation": evaluate,
            "replay": t.get("replay_s", 0.0),
            "other": t.get("worker_s", 0.0) - sanitize - execute - evaluate,
        }


@dataclass(frozen=True)
class BatchSummary:
    outcomes: tuple[SubmissionOutcome, ...]
    wall_s: float
    workers: int
    engine: str
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def count(self, status: OutcomeStatus) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)

    def format(self) -> str:
        flagged = [o for o in self.outcomes if o.review]
        lines = [
            f"{self.count('graded')} graded ({len(flagged)} flagged for review), "
            f"{self.count('failed')} failed, "
            f"{self.count('skipped')} skipped (unchanged) in {self.wall_s:.1f} s "
            f"with {self.workers} {self.engine} worker(s)"
        ]
        lines += [
            f"  FAILED {o.lab} {o.student}: {o.reason}"
            for o in self.outcomes
            if o.status == "failed"
        ]
        lines += [f"  REVIEW {o.lab} {o.student}: {'; '.join(o.review)}" for o in flagged]
        return "\n".join(lines)


def _hash_files(h: Any, root: Path, paths: list[Path]) -> None:
    for path in sorted(paths):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())


def execution_fingerprint(course_root: Path, lab: str) -> str:
    """What an execution depends on besides the submission: the grader's code, what the
    rubric has the kernel capture, the source notebook, the data, the limits. Not the
    rubric's points and thresholds (:func:`autograder.rubric.rubric_version`)."""
    from autograder.data.loaders import data_dir, data_source
    from autograder.grading.capture import capture_source

    rubric = load_rubric(lab)
    h = hashlib.sha256()
    _hash_files(h, PACKAGE_DIR, sorted(PACKAGE_DIR.rglob("*.py")))
    h.update(capture_source(rubric, Path("/artifacts")).encode())
    h.update(json.dumps([rubric.notebook, rubric.dataset]).encode())
    source = course_root / "source" / lab
    _hash_files(h, source, [p for p in source.rglob("*") if p.is_file()])
    h.update(data_source(rubric.dataset).encode())
    for folder in ("public", "heldout"):
        manifest = data_dir() / folder / "manifest.json"
        if manifest.is_file():
            h.update(manifest.read_bytes())
    h.update(json.dumps(execution_settings(), sort_keys=True).encode())
    return h.hexdigest()


def find_submissions(course_root: Path, labs: list[str], students: list[str]) -> list[Submission]:
    """Every submitted notebook of ``labs`` (all students unless some are named)."""
    submitted = course_root / "submitted"
    found = []
    for lab in labs:
        notebook = load_rubric(lab).notebook + ".ipynb"
        fingerprint = execution_fingerprint(course_root, lab)
        version = rubric_version(lab)
        names = students or sorted(p.parent.name for p in submitted.glob(f"*/{lab}") if p.is_dir())
        for student in names:
            folder = submitted / student / lab
            if not folder.is_dir():
                continue
            h = hashlib.sha256(fingerprint.encode())
            _hash_files(h, folder, [p for p in folder.rglob("*") if p.is_file()])
            execution = h.hexdigest()
            scored = hashlib.sha256(f"{execution} {version}".encode()).hexdigest()
            found.append(Submission(lab, student, folder / notebook, scored, execution))
    return found


def state_path(course_root: Path, s: Submission) -> Path:
    return course_root / "autograded" / s.student / s.lab / STATE_FILE


def already_graded(course_root: Path, s: Submission) -> bool:
    path = state_path(course_root, s)
    try:
        return bool(json.loads(path.read_text()).get("digest") == s.digest)
    except (OSError, ValueError):
        return False
