"""Measure the reference solution through the real grading path to set a lab's thresholds.

Each run grades the lab's ``correct`` example, seeded, exactly as a submission is graded
(nbgrader autograde, capture, clean-process evaluation on held-out data), and the figures
are written next to the rubric as ``labs/<lab>.calibration.json``, keyed by data source.

The held-out half is chosen by each data folder's secret key, so every machine holds out a
different half: each run stages the data again with a key of its own, and the figures
cover the variation between halves as well as between seeds. Besides the held-out score,
each run records the same model's scores on its own test split and validation data, from
which the bounds of the memorisation review are suggested (:mod:`autograder.grading.review`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat

from autograder.authoring.examples import example_path
from autograder.course import create_course
from autograder.data.formats import read_manifest
from autograder.data.loaders import DATA_DIR_ENV, data_dir
from autograder.grading.preprocessors import read_result
from autograder.rubric import calibration_path, load_calibration, load_rubric

__all__ = [
    "calibrate",
    "fresh_split",
    "suggest_review",
    "suggest_threshold",
]


def suggest_threshold(values: list[float], higher_is_better: bool = True) -> float:
    """Full marks where every reference run lands: three standard deviations (at least 0.02)
    beyond the worst run, rounded outward to two decimals. Unseeded student runs vary more
    than a handful of seeds show, and a correct solution must not lose points to chance."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    margin = max(0.02, 3 * spread)
    if higher_is_better:
        return int((min(values) - margin) * 100) / 100
    return -int(-(max(values) + margin) * 100) / 100


@contextlib.contextmanager
def fresh_split(dataset: str, where: Path) -> Iterator[str]:
    """Grading reads a data folder at ``where``: the current one's data, staged again with
    a new secret key (another held-out half). Yields the new split's id."""
    from autograder.data.sources import MnistFrom
    from autograder.data.split import split_id, split_key
    from autograder.data.staging import stage

    base = data_dir()
    if (base / "keras").is_dir():  # the mirrors: not rebuilt for every run
        shutil.copytree(base / "keras", where / "keras", dirs_exist_ok=True)
    source = read_manifest(base / "public")["datasets"].get(dataset, {}).get("source", "")
    mnist_from: MnistFrom = "fashion-mnist" if source == "offline-fashion-mnist" else "sample"
    report = stage(where, datasets=[dataset], mnist_from=mnist_from)
    if report.results[0].status == "skipped":
        raise RuntimeError(f"{dataset} could not be staged for calibration: {report.format()}")
    before = os.environ.get(DATA_DIR_ENV)
    os.environ[DATA_DIR_ENV] = str(where)
    try:
        yield split_id(split_key(where))
    finally:
        if before is None:
            del os.environ[DATA_DIR_ENV]
        else:
            os.environ[DATA_DIR_ENV] = before


def suggest_review(
    runs: list[dict[str, Any]], metric: str, higher_is_better: bool
) -> dict[str, float]:
    """Bounds of the memorisation review beyond every reference run, with the same margin as
    :func:`suggest_threshold`: ``review_beyond`` past the best held-out score, and per
    witness the largest amount by which held-out beat it."""
    sign = 1 if higher_is_better else -1
    out = {"review_beyond": suggest_threshold([r[metric] for r in runs], not higher_is_better)}
    for name in ("test", "validation"):
        gaps = [sign * (r[metric] - r[name]) for r in runs if r.get(name) is not None]
        if gaps:
            out[f"review_gap_{name}"] = max(0.0, suggest_threshold(gaps, higher_is_better=False))
    return out


def _seeded(notebook: Path, seed: int, out: Path) -> Path:
    nb = nbformat.read(notebook, as_version=4)
    cell = nbformat.v4.new_code_cell(f"import keras\nkeras.utils.set_random_seed({seed})")
    nb.cells.insert(0, cell)
    nbformat.write(nb, out)
    return out


def calibrate(
    lab: str, *, seeds: list[int], example: str = "correct", write: bool = True
) -> dict[str, Any]:
    """Grade ``example`` once per seed; record the figures under the run's data source.

    The reference (``correct``) sets the entry; other accepted variants (a SimpleRNN where
    the reference has an LSTM) are kept under ``variants``, since a threshold must let
    every accepted variant through as well.
    """
    rubric = load_rubric(lab)
    check = next(c for c in rubric.checks if c.kind == "metric")
    metric = check.params["metric"]
    higher_is_better = next(iter(check.thresholds.values())).higher_is_better
    runs: list[dict[str, Any]] = []
    source = "unknown"
    with tempfile.TemporaryDirectory(prefix="autograder-calibrate-") as tmp:
        course = create_course(Path(tmp) / "course", labs=[lab])
        for seed in seeds:
            student = f"seed{seed}"
            nb = _seeded(example_path(lab, example), seed, Path(tmp) / f"{student}.ipynb")
            course.submit(student, lab, nb)
            t = time.monotonic()
            with fresh_split(rubric.dataset, Path(tmp) / f"data-{seed}") as split:
                course.autograde(lab, student)
            seconds = round(time.monotonic() - t, 1)
            result = read_result(course.root / "autograded" / student / lab, rubric.notebook)
            if result is None or metric not in result.metrics:
                raise RuntimeError(
                    f"seed {seed}: the reference solution was not graded "
                    f"({result.error if result else 'no result'})"
                )
            source = result.data_source
            witness = {
                name: round(result.witnesses[f"{metric}@{name}"], 4)
                for name in ("test", "validation")
                if f"{metric}@{name}" in result.witnesses
            }
            runs.append(
                {
                    "seed": seed,
                    "split": split,
                    metric: round(result.metrics[metric], 4),
                    **witness,
                    "score": result.score,
                    "seconds": seconds,
                }
            )
            print(
                f"{lab} seed {seed} (split {split}): {metric} {result.metrics[metric]:.4f} "
                f"(test split {witness.get('test', float('nan')):.4f}, validation "
                f"{witness.get('validation', float('nan')):.4f}), "
                f"score {result.score:g}/{result.max_score:g}, {seconds} s",
                flush=True,
            )
    values = [r[metric] for r in runs]
    entry = {
        "measured": datetime.now(UTC).strftime("%Y-%m-%d"),
        "example": example,
        "metric": metric,
        "runs": runs,
        "mean": round(statistics.mean(values), 4),
        "min": min(values),
        "max": max(values),
        "suggested_full": suggest_threshold(values, higher_is_better),
        "suggested_review": suggest_review(runs, metric, higher_is_better),
    }
    print(json.dumps({source: entry}, indent=2))
    if write:
        data = load_calibration(lab)
        if example == "correct":
            entry["variants"] = data.get(source, {}).get("variants", {})
            data[source] = entry
        else:
            data.setdefault(source, {}).setdefault("variants", {})[example] = entry
        calibration_path(lab).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return entry
