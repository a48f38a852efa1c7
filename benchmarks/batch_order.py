"""The order a batch hands out a class of the four labs: as found (lab by lab, IMDB last)
against longest first (``autograder.batch.ordering``), side by side in one run.

The class: the first N non-adversarial examples of each lab, one student each, IMDB on
its quick profile (``AUTOGRADER_TRAIN_LIMIT=imdb=4000``, as the demo and the tests run
it). Two copies of it are graded from nothing, one each way, with the same workers; the
script prints each wall time, the labs of the last submissions done, and the ratio of the
walls. An odd number of IMDB notebooks on two workers shows the tail: when they come
last, one of them runs alone at the end while the other worker has nothing left. Run it
on an idle machine.

    .venv/bin/python benchmarks/batch_order.py [--per-lab 3] [--imdb 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from regrade import four_labs_class

from autograder.batch.ordering import expected_seconds
from autograder.batch.scheduling import grade_batch
from autograder.rubric import lab_ids


def _graded(root: Path, workers: int, by_cost: bool) -> tuple[float, int]:
    begin = time.monotonic()
    summary = grade_batch(root, workers=workers, progress=False, by_cost=by_cost)
    wall = time.monotonic() - begin
    return wall, summary.count("graded")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-lab", type=int, default=3)
    parser.add_argument("--imdb", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("AUTOGRADER_TRAIN_LIMIT", "imdb=4000")
    work = Path(tempfile.mkdtemp(prefix="order-bench-"))
    try:
        found, longest = work / "found", work / "longest"
        n = len(four_labs_class(found, args.per_lab, {"lab5_imdb_rnn": args.imdb}))
        shutil.copytree(found, longest)
        costs = {lab: expected_seconds(lab) for lab in lab_ids()}
        print(f"class: {n} submissions; expected seconds per lab (calibration): {costs}")
        walls = {}
        for name, root, by_cost in (("as found", found, False), ("longest first", longest, True)):
            wall, graded = _graded(root, args.workers, by_cost)
            walls[name] = wall
            print(f"{name:14} {wall:7.1f} s wall, {graded} of {n} graded; {_last_done(root)}")
        ratio = walls["as found"] / walls["longest first"]
        print(f"ratio (as found / longest first): {ratio:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _last_done(root: Path) -> str:
    """The labs of the last three submissions done, from the batch summary."""
    summary = json.loads((root / "batch_summary.json").read_text())
    last = [o["lab"] for o in summary["outcomes"][-3:]]
    return f"last three done: {', '.join(last)}"


if __name__ == "__main__":
    raise SystemExit(main())
