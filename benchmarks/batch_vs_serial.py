"""Serial `nbgrader autograde` against `autograder grade` on the same submissions.

Two workloads: lab 3 (MNIST dense) on the offline 5,000-digit sample, where kernel start
and imports weigh most, and on full-size Fashion-MNIST (60,000 training images), where
training does. For each, the same N submissions are graded three times in one run, in
identical course directories: by serial ``nbgrader autograde`` as nbgrader runs it (a
kernel started for each notebook, and an evaluator process for each:
``AUTOGRADER_FORK_KERNELS=off``), by serial ``nbgrader autograde`` with this project's
fork server (kernels and evaluator forked from one TensorFlow import, as the formgrader's
autograde now runs), and by ``autograder grade``. The script prints the ratios of wall
times, the CPU utilisation of each (CPU seconds / (cores x wall)), and the batch grader's
overhead per submission (time beyond the notebook's own cells; each worker's one-time
start-up, before its first submission, is shown apart and spread over the class), and the
ratio a grader that added nothing would reach: the serial time over the batch's notebooks'
own cells, as they ran side by side, divided among the workers.

    .venv/bin/python benchmarks/batch_vs_serial.py [--n 8] [--workload sample fashion]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from autograder.batch.submissions import SubmissionOutcome
from autograder.settings import DATA_DIR_ENV, FORK_KERNELS_ENV, QUIET_TENSORFLOW

LAB = "lab3_mnist_dense"
# A class: mostly correct work, some of the usual mistakes (all of them train a model).
MIX = ["correct", "not-scaled", "correct", "wrong-architecture", "correct", "badly-trained"]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _busy() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def idle_busy(seconds: float = 5.0) -> float:
    """The machine's busy share before the run: the utilisation figures count every CPU
    second of the machine, so they hold only when this is near zero."""
    b0, t0 = _busy(), time.monotonic()
    time.sleep(seconds)
    return (_busy() - b0) / ((os.cpu_count() or 1) * (time.monotonic() - t0))


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds of ``cmd``, the CPU seconds of the processes it started that were reaped
    (the process tree), and the busy CPU seconds of the whole machine over the same time.
    The machine's figure is the utilisation: kernels of sandbox accounts run in PID
    namespaces whose processes are killed, not reaped, so the tree's figure misses them."""
    cpu0, busy0, t0 = _children_cpu(), _busy(), time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall, cpu, busy = time.monotonic() - t0, _children_cpu() - cpu0, _busy() - busy0
    if proc.returncode not in (0, 1):  # 1: some submission failed; still a measurement
        sys.exit(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, cpu, busy


def _course(root: Path, n: int, env: dict[str, str]) -> None:
    code = f"""
from pathlib import Path
from autograder.course import create_course
from autograder.authoring.examples import example_path
course = create_course(Path({str(root)!r}), labs=[{LAB!r}])
mix = {MIX!r}
for i in range({n}):
    course.submit(f"student{{i:02d}}", {LAB!r}, example_path({LAB!r}, mix[i % len(mix)]))
"""
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)


def _scores(root: Path) -> dict[str, dict[str, float]]:
    """Per student, each check's score (from the autograded ``.grading.json``)."""
    out = {}
    for path in sorted(root.glob(f"autograded/*/{LAB}/{LAB}.grading.json")):
        checks = json.loads(path.read_text())["checks"]
        out[path.parts[-3]] = {c["id"]: c["score"] for c in checks if c["kind"] != "metric"}
        out[path.parts[-3]]["metric"] = sum(c["score"] for c in checks if c["kind"] == "metric")
    return out


def _non_metric(scores: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {k: {c: v for c, v in s.items() if c != "metric"} for k, s in scores.items()}


def run(workload: str, n: int, workers: int | None, keep: Path | None) -> dict[str, float]:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **QUIET_TENSORFLOW}
    work = Path(tempfile.mkdtemp(prefix=f"bench-{workload}-"))
    if workload == "fashion":
        env[DATA_DIR_ENV] = str(work / "data")
        subprocess.run(
            [str(bin_dir / "autograder"), "stage-data", "--mnist-from", "fashion-mnist"],
            env=env,
            check=True,
            capture_output=True,
        )
    serial, forked, batch = work / "serial", work / "serial-forked", work / "batch"
    _course(serial, n, env)
    shutil.copytree(serial, forked)
    shutil.copytree(serial, batch)
    cores = os.cpu_count() or 1
    idle = idle_busy()
    print(f"\nmachine busy before the run (must be near 0): {idle:.2f}")
    nbgrader = [str(bin_dir / "nbgrader"), "autograde", LAB]
    s_wall, s_cpu, s_busy = _timed(nbgrader, serial, {**env, FORK_KERNELS_ENV: "off"})
    f_wall, _, f_busy = _timed(nbgrader, forked, {**env, FORK_KERNELS_ENV: "on"})
    cmd = [str(bin_dir / "autograder"), "grade", str(batch), "--lab", LAB, "--no-progress"]
    if workers:
        cmd += ["--workers", str(workers)]
    b_wall, b_cpu, b_busy = _timed(cmd, batch, env)
    summary = json.loads((batch / "batch_summary.json").read_text())
    graded = [o for o in summary["outcomes"] if o["status"] == "graded"]
    overhead = [SubmissionOutcome(**o).overhead_s for o in graded]
    parts = [SubmissionOutcome(**o).overhead_parts() for o in graded]
    startup = [o["timing"]["startup_s"] for o in graded if "startup_s" in o["timing"]]
    ahead = sum(o["timing"].get("kernel_ahead", 0) for o in graded)
    # The notebooks' own cells as they ran side by side in the batch, spread over its
    # workers: a batch whose grader added nothing at all would still take this long.
    cells_wall = sum(o["timing"].get("cells_s", 0.0) for o in graded) / summary["workers"]
    figures = {
        "n": n,
        "cores": cores,
        "workers": summary["workers"],
        "serial_wall_s": s_wall,
        "serial_forked_wall_s": f_wall,
        "batch_wall_s": b_wall,
        "ratio": s_wall / b_wall,
        "ratio_to_serial_forked": f_wall / b_wall,
        "serial_utilisation": s_busy / (cores * s_wall),
        "serial_forked_utilisation": f_busy / (cores * f_wall),
        "batch_utilisation": b_busy / (cores * b_wall),
        "serial_process_tree": s_cpu / (cores * s_wall),
        "batch_process_tree": b_cpu / (cores * b_wall),
        "idle_busy_before": idle,
        "overhead_s_mean": statistics.mean(overhead) if overhead else float("nan"),
        "overhead_s_max": max(overhead) if overhead else float("nan"),
        # Once per worker, before its first submission (evaluator, imports, first kernel).
        "startup_s_mean": statistics.mean(startup) if startup else 0.0,
        # Everything the grader adds, start-up included, spread over the submissions.
        "overhead_with_startup_s": (sum(overhead) + sum(startup)) / len(graded)
        if graded
        else float("nan"),
        "kernels_started_ahead": ahead,
        **{
            f"overhead_{name.replace(' ', '_')}_s": statistics.mean(p[name] for p in parts)
            for name in (parts[0] if parts else {})
        },
        "cells_only_wall_s": cells_wall,
        "cells_only_ratio": s_wall / cells_wall if cells_wall else float("nan"),
        "graded": len(graded),
    }
    s_scores, b_scores, f_scores = _scores(serial), _scores(batch), _scores(forked)
    f = figures
    print(f"\n== {workload}: {n} submissions of {LAB}, {cores} cores ==")
    print(
        f"serial nbgrader autograde: {s_wall:7.1f} s wall, "
        f"utilisation {f['serial_utilisation']:.2f} (reaped process tree "
        f"{f['serial_process_tree']:.2f}); kernels started as nbgrader starts them"
    )
    print(
        f"  the same, fork server:   {f_wall:7.1f} s wall, "
        f"utilisation {f['serial_forked_utilisation']:.2f}; kernels and evaluator forked"
    )
    print(
        f"autograder grade:          {b_wall:7.1f} s wall, utilisation {f['batch_utilisation']:.2f}"
        f" (reaped process tree {f['batch_process_tree']:.2f}), {f['workers']} workers"
    )
    print(
        f"ratio (serial / batch):    {f['ratio']:.2f} "
        f"(to serial with the fork server: {f['ratio_to_serial_forked']:.2f})"
    )
    print(
        f"overhead per submission:   mean {f['overhead_s_mean']:.2f} s, "
        f"max {f['overhead_s_max']:.2f} s "
        f"({f['kernels_started_ahead']:.0f} of {len(graded)} kernels started ahead)"
    )
    if parts:
        where = ", ".join(
            f"{name} {statistics.mean(p[name] for p in parts):.2f}" for name in parts[0]
        )
        print(f"  where it went (mean s):  {where}")
    print(
        f"worker start-up (once):    mean {f['startup_s_mean']:.2f} s per worker; "
        f"overhead with start-up spread over the class: {f['overhead_with_startup_s']:.2f} s"
    )
    print(
        f"the cells alone:           {cells_wall:7.1f} s (their sum / workers); a grader adding "
        f"nothing to them would reach a ratio of {f['cells_only_ratio']:.2f}"
    )
    # Training is not seeded, so the held-out accuracy (and partial credit on it) differs
    # between any two runs of the same notebook, serial or not; every other check must agree.
    same = _non_metric(s_scores) == _non_metric(b_scores) == _non_metric(f_scores)
    totals = [
        (k, round(sum(s_scores[k].values()), 2), round(sum(b_scores.get(k, {}).values()), 2))
        for k in s_scores
    ]
    print(f"non-metric checks identical: {same}; totals (serial, batch): {totals}")
    figures["non_metric_identical"] = float(same)
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"{workload}.json").write_text(
            json.dumps({**figures, "serial_scores": s_scores, "batch_scores": b_scores}, indent=1)
        )
    if os.environ.get("BENCH_KEEP"):
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--workload", nargs="+", default=["sample", "fashion"], choices=["sample", "fashion"]
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    for workload in args.workload:
        run(workload, args.n, args.workers, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
