"""What TensorFlow tolerates across fork, measured: the reason the fork server
(``autograder/sandbox/forkserver.py``) imports and never runs an op.

For each case a process imports numpy, TensorFlow and Keras, optionally runs one
TensorFlow op, then forks; the child runs a matrix product and trains a small model for
one epoch. The script prints, per case, the parent's threads at the fork and whether the
child finished (and in how long) or hung (killed after ``--wait`` seconds).

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
if sys.argv[1] == "op-before-fork":
    float(tf.reduce_sum(tf.ones((3, 3))))
threads = len(os.listdir("/proc/self/task"))
pid = os.fork()
if pid == 0:
    float(tf.reduce_sum(tf.ones((300, 300)) @ tf.ones((300, 300))))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
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
    for case in ("import-only", "op-before-fork"):
        begin = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", _CASE, case, str(args.wait)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=args.wait + 120,
        )
        line = out.stdout.strip().splitlines()[-1:] or [f"failed: {out.stderr[-300:]}"]
        print(f"{case:15s} {line[0]} ({time.monotonic() - begin:.1f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
