"""Measure the reference solution through the real grading path to set a lab's thresholds.

Each run grades the lab's ``correct`` example, seeded, exactly as a submission is graded
(nbgrader autograde, capture, clean-process evaluation on held-out data), and the figures
are written next to the rubric as ``labs/<lab>.calibration.json``, keyed by data source.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat

from .course import create_course
from .examples import example_path
from .pipeline import read_result
from .rubric import load_rubric

__all__ = ["calibrate", "calibration_path", "load_calibration", "suggest_threshold"]


def calibration_path(lab: str) -> Path:
    return Path(__file__).parent / "labs" / f"{lab}.calibration.json"


def load_calibration(lab: str) -> dict[str, Any]:
    path = calibration_path(lab)
    return json.loads(path.read_text()) if path.is_file() else {}


def suggest_threshold(values: list[float], higher_is_better: bool = True) -> float:
    """Full marks where every reference run lands: three standard deviations (at least 0.02)
    beyond the worst run, rounded outward to two decimals. Unseeded student runs vary more
    than a handful of seeds show, and a correct solution must not lose points to chance."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    margin = max(0.02, 3 * spread)
    if higher_is_better:
        return int((min(values) - margin) * 100) / 100
    return -int(-(max(values) + margin) * 100) / 100


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
    runs = []
    source = "unknown"
    with tempfile.TemporaryDirectory(prefix="autograder-calibrate-") as tmp:
        course = create_course(Path(tmp) / "course", labs=[lab])
        for seed in seeds:
            student = f"seed{seed}"
            nb = _seeded(example_path(lab, example), seed, Path(tmp) / f"{student}.ipynb")
            course.submit(student, lab, nb)
            t = time.monotonic()
            course.autograde(lab, student)
            seconds = round(time.monotonic() - t, 1)
            result = read_result(course.root / "autograded" / student / lab, rubric.notebook)
            if result is None or metric not in result.metrics:
                raise RuntimeError(
                    f"seed {seed}: the reference solution was not graded "
                    f"({result.error if result else 'no result'})"
                )
            source = result.data_source
            runs.append(
                {
                    "seed": seed,
                    metric: round(result.metrics[metric], 4),
                    "score": result.score,
                    "seconds": seconds,
                }
            )
            print(
                f"{lab} seed {seed}: {metric} {result.metrics[metric]:.4f}, "
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
