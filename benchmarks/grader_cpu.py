"""What the batch grader itself costs per submission, in CPU seconds, beside its kernels.

``batch_vs_serial.py`` reports the overhead per submission in wall seconds: on a machine
whose cores the workers keep busy, every step of the grader's own runs at a share of a
core, so that figure says little of what could be cut. This script grades the same lab
3 submissions twice with one worker, ``--small`` and ``--large`` of them, samples the
CPU time of every process the batch starts (every 20 ms: kernels run for seconds), and
reports the difference per submission added: the machine's busy CPU seconds, the kernels'
(the sandbox accounts' processes: the student's code, and the kernel's own start-up) and
the rest, the grader's: its worker, evaluator and coordinator. As root only, where kernels
run as accounts of their own. Start-up, paid once per
batch, cancels out. Run it on an idle machine.

    .venv/bin/python benchmarks/grader_cpu.py [--small 2] [--large 6]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil
from batch_vs_serial import LAB, _busy, _course, idle_busy

from autograder.sandbox.accounts import ACCOUNT_PREFIX, EVALUATOR_ACCOUNT
from autograder.settings import QUIET_TENSORFLOW


def _kind(proc: psutil.Process, top: int) -> str:
    try:
        account = pwd.getpwuid(proc.uids().real).pw_name
    except KeyError:
        account = ""
    if account.startswith(ACCOUNT_PREFIX):
        return "kernels"  # the sandbox accounts' processes
    if account == EVALUATOR_ACCOUNT:
        return "evaluation children"
    return "coordinator" if proc.pid == top else "grader processes"


def measure(root: Path, env: dict[str, str]) -> tuple[float, float, dict[str, float]]:
    """Wall seconds, the machine's busy CPU seconds and each kind's CPU seconds, of one
    ``autograder grade`` of the course at ``root``."""
    cmd = [str(Path(sys.executable).parent / "autograder"), "grade", str(root)]
    cmd += ["--lab", LAB, "--workers", "1", "--no-progress"]
    since = time.time()
    own0 = time.process_time()
    busy0, t0 = _busy(), time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: dict[tuple[int, float], tuple[str, float]] = {}
    while proc.poll() is None:
        for p in psutil.process_iter(["create_time"]):
            try:
                if p.info["create_time"] < since - 1 or p.pid == os.getpid():
                    continue
                t = p.cpu_times()
                kind = _kind(p, proc.pid)
                seen[(p.pid, p.info["create_time"])] = (kind, t.user + t.system)
            except psutil.Error:
                continue
        time.sleep(0.02)
    wall, busy = time.monotonic() - t0, _busy() - busy0
    # The sampling above is itself busy (every 20 ms, every process): not the grader's.
    busy -= time.process_time() - own0
    kinds: dict[str, float] = defaultdict(float)
    for kind, cpu in seen.values():
        kinds[kind] += cpu
    return wall, busy, kinds


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=2)
    parser.add_argument("--large", type=int, default=6)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run it as root: kernels are told apart by their sandbox accounts")
    env = {**os.environ, **QUIET_TENSORFLOW}
    work = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    try:
        print(f"machine busy before the run (must be near 0): {idle_busy():.2f}")
        runs = {}
        for n in (args.small, args.large):
            _course(work / str(n), n, env)
            runs[n] = measure(work / str(n), env)
            wall, busy, kinds = runs[n]
            parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(kinds.items()))
            print(f"{n} submissions: {wall:.1f} s wall, {busy:.1f} CPU s busy ({parts})")
        (w0, b0, k0), (w1, b1, k1) = runs[args.small], runs[args.large]
        added = args.large - args.small
        machine = (b1 - b0) / added
        kernels = (k1["kernels"] - k0["kernels"]) / added
        print(f"\nper submission added ({LAB}, 1 worker, {os.cpu_count()} cores):")
        print(f"  wall                 {(w1 - w0) / added:6.2f} s")
        print(f"  machine CPU          {machine:6.2f} s")
        print(f"  kernels' CPU         {kernels:6.2f} s (the notebook, and its kernel's start)")
        print(f"  the grader's CPU     {machine - kernels:6.2f} s (machine minus kernels)")
        for kind in ("coordinator", "grader processes", "evaluation children"):
            print(f"    of which {kind + ':':20} {(k1[kind] - k0[kind]) / added:5.2f} s sampled")
        print("    the rest: processes too short to be sampled, and the last 20 ms of each")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
