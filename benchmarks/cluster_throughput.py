"""Throughput of ``autograder grade`` against a real Dask cluster: a scheduler and 1, then
2, workers started as processes of their own over TCP on loopback (the test suite's
``tests/dask_cluster.py``), the same 8 MNIST dense submissions each time, in fresh course
folders. Prints wall time and submissions per minute for each cluster size.

    .venv/bin/python benchmarks/cluster_throughput.py [--n 8] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dask_cluster import tcp_cluster

from autograder.authoring.examples import example_path
from autograder.batch.scheduling import grade_batch
from autograder.course import create_course

LAB = "lab3_mnist_dense"
MIX = ["correct", "not-scaled", "correct", "wrong-architecture", "correct", "badly-trained"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    rows = []
    try:
        for workers in args.workers:
            course = create_course(work / f"course-{workers}", labs=[LAB])
            for i in range(args.n):
                course.submit(f"s{i:02d}", LAB, example_path(LAB, MIX[i % len(MIX)]))
            with tcp_cluster(workers, {}, work / f"dask-{workers}.log") as address:
                begin = time.monotonic()
                summary = grade_batch(course.root, scheduler=address, progress=False)
                wall = time.monotonic() - begin
            print(summary.format().splitlines()[0])
            rows.append((workers, wall, summary.count("graded")))
        print("\nworkers  wall (s)  graded  per minute")
        for workers, wall, graded in rows:
            print(f"{workers:7d}  {wall:8.1f}  {graded:6d}  {60 * graded / wall:10.2f}")
        if len(rows) > 1:
            print(
                f"speed-up {rows[0][0]} -> {rows[-1][0]} workers: {rows[0][1] / rows[-1][1]:.2f}x"
            )
        return 0 if all(g == args.n for _, _, g in rows) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
