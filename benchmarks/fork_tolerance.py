"""What TensorFlow tolerates across fork, measured: the reason the fork server
(``autograder/sandbox/forkserver.py``) imports and never runs an op.

For each case a process imports numpy, TensorFlow and Keras, optionally runs one
TensorFlow op (with TensorFlow's default thread pools, or one thread in each), then forks;
the child either runs eager operations only (a matrix product, a small model built and
called, as the evaluator does) or also a ``tf.function`` (Keras' ``fit``, which its
``predict`` shares). The script prints, per case, the parent's threads at the fork and
whether the child finished (and in how long) or hung (killed after ``--wait`` seconds).

    .venv/bin/python benchmarks/fork_tolerance.py [--wait 20]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from autograder.settings import QUIET_TENSORFLOW

_CASE = r"""
import os, sys, time
import numpy as np, tensorflow as tf, keras
case, child = sys.argv[1], sys.argv[3]
if case == "op-before-fork, 1 thread":
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
if case.startswith("op-before-fork"):
    float(tf.reduce_sum(tf.ones((3, 3))))
threads = len(os.listdir("/proc/self/task"))
pid = os.fork()
if pid == 0:
    float(tf.reduce_sum(tf.ones((300, 300)) @ tf.ones((300, 300))))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model(np.ones((64, 4), "float32"))
    if child == "tf.function":
        model.compile("adam", "mse")
        model.fit(np.ones((64, 4)), np.ones((64, 2)), epochs=1, verbose=0)
    os._exit(0)
start, wait = time.monotonic(), float(sys.argv[2])
while time.monotonic() - start < wait:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        code = os.waitstatus_to_exitcode(status)
        print(f"threads at fork {threads}: child exit {code} in {time.monotonic() - start:.1f} s")
        break
    time.sleep(0.1)
else:
    os.kill(pid, 9)
    print(f"threads at fork {threads}: child HUNG, killed after {wait:.0f} s")
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=20.0)
    args = parser.parse_args()
    env = {**os.environ, **QUIET_TENSORFLOW}
    for case in ("import-only", "op-before-fork", "op-before-fork, 1 thread"):
        for child in ("eager", "tf.function"):
            begin = time.monotonic()
            out = subprocess.run(
                [sys.executable, "-c", _CASE, case, str(args.wait), child],
                env=env,
                capture_output=True,
                text=True,
                check=False,
                timeout=args.wait + 120,
            )
            line = out.stdout.strip().splitlines()[-1:] or [f"failed: {out.stderr[-300:]}"]
            took = time.monotonic() - begin
            print(f"{case:25s} child {child:11s} {line[0]} ({took:.1f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
