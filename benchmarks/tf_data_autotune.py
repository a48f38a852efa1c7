"""Two lab 3 trainings side by side, with tf.data's autotuning and without it.

A batch grades one notebook per core, so its trainings run side by side. Each round runs two
processes at once, each training the lab's network (Dense 512 + Dense 10, rmsprop, batch
128) on arrays of the offline sample's size with one TensorFlow thread, as a batch worker's
kernels on 2 cores do: once as TensorFlow leaves tf.data (autotuning on), once as the
grader's kernels and evaluator run it (``autograder.grading.tf_data``: autotuning off), in
alternating order. It prints each way's wall and CPU seconds a training, the share of the
machine idle while both trained, and the ratio of the walls.

    .venv/bin/python benchmarks/tf_data_autotune.py [--rounds 3] [--epochs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from batch_vs_serial import _busy

from autograder.settings import QUIET_TENSORFLOW, threads_environment

WAYS = ("autotuned", "untuned")


def child(way: str, epochs: int, ready: Path, go: Path) -> None:
    import keras
    import numpy as np

    if way == "untuned":
        from autograder.grading.tf_data import untune_tf_data

        untune_tf_data()
    rng = np.random.default_rng(0)
    x = rng.random((5000, 784), dtype=np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 10, 5000), 10)
    model = keras.Sequential(
        [
            keras.Input(shape=(784,)),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:256], y[:256], epochs=1, batch_size=128, verbose=0)  # traced before timing
    ready.touch()
    while not go.exists():
        time.sleep(0.001)
    cpu, start = time.process_time(), time.time()
    model.fit(x, y, epochs=epochs, batch_size=128, verbose=0)
    print(json.dumps({"start": start, "end": time.time(), "cpu": time.process_time() - cpu}))


def pair(way: str, epochs: int) -> dict[str, float]:
    """Two trainings started together; the machine's busy share while both ran."""
    env = {**os.environ, **QUIET_TENSORFLOW, **threads_environment(1)}
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        ready = [Path(tmp) / f"ready{i}" for i in range(2)]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    way,
                    "--epochs",
                    str(epochs),
                    "--ready",
                    str(r),
                    "--go",
                    str(go),
                ],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for r in ready
        ]
        while not all(r.exists() for r in ready):
            if any(p.poll() is not None for p in procs):
                sys.exit("a training failed before it started")
            time.sleep(0.01)
        samples: list[tuple[float, float]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append((time.time(), _busy()))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        go.touch()
        runs = [json.loads(p.communicate()[0]) for p in procs]
        done.set()
        sampler.join()
    both = [
        s for s in samples if max(r["start"] for r in runs) <= s[0] <= min(r["end"] for r in runs)
    ]
    cores = os.cpu_count() or 1
    busy = (both[-1][1] - both[0][1]) / (cores * (both[-1][0] - both[0][0]))
    return {
        "wall_s": statistics.mean(r["end"] - r["start"] for r in runs),
        "cpu_s": statistics.mean(r["cpu"] for r in runs),
        "idle": 1 - busy,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--child", choices=WAYS)
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--go", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.epochs, args.ready, args.go)
        return 0
    figures: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    for r in range(args.rounds):
        for way in WAYS if r % 2 == 0 else WAYS[::-1]:
            f = pair(way, args.epochs)
            figures[way].append(f)
            print(
                f"round {r} {way:9}: {f['wall_s']:.2f} s wall, {f['cpu_s']:.2f} s CPU a "
                f"training, machine idle {f['idle']:.0%} while both trained",
                flush=True,
            )
    mean = {
        way: {k: statistics.mean(f[k] for f in figures[way]) for k in figures[way][0]}
        for way in WAYS
    }
    for way in WAYS:
        m = mean[way]
        print(f"{way:9} (mean): {m['wall_s']:.2f} s wall, {m['cpu_s']:.2f} s CPU, ", end="")
        print(f"idle {m['idle']:.0%}")
    ratio = mean["autotuned"]["wall_s"] / mean["untuned"]["wall_s"]
    print(f"ratio of walls, autotuned / untuned: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
