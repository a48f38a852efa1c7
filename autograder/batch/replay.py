"""Stored executions, replayed inside nbgrader's own ``autograde``.

A worker stores what it produced for a submission (its executed cells, the evaluation's
result, the captured outputs) under ``<course>/.autograder/executed/<key>``, where the key
(:func:`execution_key`) covers the submission, the grader's inputs and the sanitized notebook.
The coordinator then runs nbgrader's real ``autograde`` with :class:`ReplayExecute` in place of
``GraderExecute`` (:func:`replay_api`): it finds the stored execution and replays it, so the
gradebook, the autograded notebook and the feedback are exactly what a serial
``nbgrader autograde`` writes, from a single writer.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from nbformat import NotebookNode, from_dict
from traitlets import Unicode

from autograder.grading.execute import GraderExecute
from autograder.grading.preprocessors import autograde_preprocessors
from autograder.results import GradingResult

__all__ = ["ReplayExecute", "cache_dir", "execution_key", "replay_api", "store_execution"]


def execution_key(nb: NotebookNode, submission_digest: str) -> str:
    """One submission (its files and the grader's inputs: ``Submission.digest``) and the
    sanitized notebook as execution sees it (cell kinds, sources, nbgrader metadata).

    Scoped to the submission: two students' identical notebooks are each run, not one
    replayed for the other."""
    h = hashlib.sha256(submission_digest.encode())
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        h.update(json.dumps([cell.cell_type, cell.source, meta], sort_keys=True).encode())
    return h.hexdigest()


def cache_dir(course_root: Path) -> Path:
    return course_root / ".autograder" / "executed"


def store_execution(
    entry: Path, nb: NotebookNode, resources: dict[str, Any], result: GradingResult
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    (tmp / "cells.json").write_text(json.dumps(nb.cells))
    (tmp / "result.json").write_text(result.to_json())
    extra = {"capture_outputs": resources.get("autograder", {}).get("capture_outputs", [])}
    (tmp / "meta.json").write_text(json.dumps(extra))
    try:
        tmp.rename(entry)  # atomic: a killed worker leaves no half entry
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another worker stored the same execution


class ReplayExecute(GraderExecute):
    """``GraderExecute`` that replays an execution stored by a batch worker when one
    matches the notebook, and executes as usual when none does."""

    replay_dir = Unicode("", help="Folder of stored executions").tag(config=True)
    submission_digest = Unicode("", help="Submission.digest of the one being graded").tag(
        config=True
    )

    def preprocess(self, nb: NotebookNode, resources: Any) -> tuple[NotebookNode, Any]:
        entry = Path(self.replay_dir) / execution_key(nb, self.submission_digest)
        if not self.replay_dir or not (entry / "result.json").is_file():
            self.log.warning("no stored execution for this notebook: executing it here")
            return super().preprocess(nb, resources)
        nb.cells = [from_dict(c) for c in json.loads((entry / "cells.json").read_text())]
        meta = json.loads((entry / "meta.json").read_text())
        resources.setdefault("autograder", {}).update(
            result=GradingResult.from_json((entry / "result.json").read_text()),
            capture_outputs=meta["capture_outputs"],
        )
        return nb, resources


def replay_api(course: Any, cache: Path) -> Any:
    from nbgrader.apps import NbGraderAPI

    from autograder._runtime import ensure_tool_path

    config = course.config()
    config.Autograde.autograde_preprocessors = [
        ReplayExecute if step is GraderExecute else step for step in autograde_preprocessors()
    ]
    config.ReplayExecute.replay_dir = str(cache)
    ensure_tool_path()
    return NbGraderAPI(config=config)
