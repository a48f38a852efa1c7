"""The coordinator's replay (nbgrader's own ``autograde`` of a stored execution) per
submission, side by side in one run: as nbgrader runs it (a SQLAlchemy engine per
gradebook it opens, the notebook validated after every preprocessor, a commit per
gradebook write) against the batch's (one engine shared by the coordinator's gradebooks,
``autograder.batch.replay.one_engine``; one validation, after the last preprocessor; no
sanitizing pass, the worker's sanitized notebook being replayed under the key the worker
names; one commit, ``one_transaction``), and the batch's with nbgrader's commits.

A class of N lab 3 submissions on the offline sample is graded once; then every
submission is replayed again, ``--rounds`` times each way, the three ways alternating, in
this one process, each replay into a gradebook that no longer holds that submission (a
replay of the same values again writes nothing to the disk). The script prints the mean
CPU and wall seconds per replay each way and their ratios. Run it on an idle machine.

    .venv/bin/python benchmarks/replay_cost.py [--n 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from batch_vs_serial import LAB, MIX
from nbformat import reads
from nbgrader.api import Gradebook

from autograder.authoring.examples import example_path
from autograder.batch import replay
from autograder.batch.replay import (
    cache_dir,
    execution_key,
    notebook_digest,
    one_engine,
    replay_api,
    warm_replay,
)
from autograder.batch.scheduling import _record, grade_batch
from autograder.batch.submissions import Submission, find_submissions
from autograder.batch.worker import _resources, _sanitize, _worker_config
from autograder.course import Course, create_course
from autograder.grading.preprocessors import read_result

WAYS = ("nbgrader's", "the batch's, nbgrader's commits", "the batch's")
BATCH = WAYS[1:]


@contextlib.contextmanager
def _commits(way: str) -> Iterator[None]:
    """The replay's transactions as ``way`` makes them: the batch's one, or nbgrader's
    (a commit per gradebook write), with the batch's shared engine or without."""
    if way == "the batch's":
        yield
        return
    shared = one_engine if way in BATCH else lambda url: contextlib.nullcontext()
    with mock.patch.object(replay, "one_transaction", shared):
        yield


def _stored_key(course: Course, s: Submission) -> str:
    """The key the batch's worker stored ``s``'s execution under (it sanitizes the notebook
    as the worker did), which the batch's replay is told."""
    config = _worker_config(course)
    nb = reads(s.notebook.read_text(), as_version=4)
    nb = _sanitize(nb, _resources(course, s.lab, s.notebook.stem, s.student), config)
    return execution_key(nb, s.execution_digest)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        course = create_course(Path(tmp) / "course", labs=[LAB])
        for i in range(args.n):
            course.submit(f"student{i:02d}", LAB, example_path(LAB, MIX[i % len(MIX)]))
        summary = grade_batch(course.root, progress=False)
        print(summary.format())
        subs = find_submissions(course.root, [LAB], [])
        apis = {way: replay_api(course, cache_dir(course.root)) for way in WAYS}
        nbgrader = apis["nbgrader's"].config
        nbgrader.Exporter.optimistic_validation = False  # its default
        # and its sanitizing pass before the replay, not in it
        nbgrader.Autograde.sanitize_preprocessors = nbgrader.ReplayExecute.sanitize_steps
        nbgrader.ReplayExecute.sanitize_steps = []
        keys = {s: _stored_key(course, s) for s in subs}
        digests = {s: notebook_digest(s.notebook.read_bytes()) for s in subs}
        for api in apis.values():
            api.config.ReplayExecute.execute_missing = False  # a replay, or a failure
        warm_replay(course, [LAB])
        times: dict[str, list[tuple[float, float]]] = {way: [] for way in apis}
        for _ in range(args.rounds):
            for way, times_of in times.items():
                api = apis[way]
                with _commits(way):
                    for s in subs:
                        # As in a class's first grading: the replay writes its rows anew.
                        with Gradebook(course.db_url) as gb:
                            gb.remove_submission(LAB, s.student)
                        cpu, wall = time.process_time(), time.monotonic()
                        # As a worker reports it: the key, with the digest of the bytes it
                        # read (without which the replay sanitizes and looks the key up).
                        done = {"key": keys[s], "notebook_digest": digests[s]}
                        if way not in BATCH:
                            done = {"key": ""}  # found by what nbgrader reads
                        outcome = _record(course.root, api, s, done, read_result)
                        times_of.append((time.process_time() - cpu, time.monotonic() - wall))
                        if outcome.status != "graded":
                            raise SystemExit(f"{s.student}: {outcome.status} {outcome.reason}")
        mean = {
            way: (statistics.mean(c for c, _ in t), statistics.mean(w for _, w in t))
            for way, t in times.items()
        }
        for way, (cpu, wall) in mean.items():
            print(f"replay, {way:32s}: {cpu:.3f} CPU s, {wall:.3f} s wall per submission")
        ratio = mean["nbgrader's"][0] / mean["the batch's"][0]
        print(
            f"CPU per replay, nbgrader's / the batch's: {ratio:.2f} ({len(subs)} submissions, "
            f"{args.rounds} rounds each way)"
        )
        commits, one = mean["the batch's, nbgrader's commits"], mean["the batch's"]
        print(
            f"the batch's replay, nbgrader's commits / one commit: {commits[1] / one[1]:.2f} "
            f"wall, {commits[0] / one[0]:.2f} CPU"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
