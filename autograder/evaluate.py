"""Grade captured artifacts in a clean process: load the model safely, score it on held-out data.

Run as ``python -m autograder.evaluate LAB ARTIFACTS --out RESULT.json``; the grading
pipeline starts it as a subprocess with a time limit, so that neither the student's
kernel nor a crafted model file can touch the process that records grades.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .capture import MODEL_FILE, read_capture
from .checks import ArraySummary, Evidence, run_checks, summarize_model
from .results import CheckResult, GradingResult
from .rubric import Preprocess, Rubric, load_rubric

__all__ = [
    "accuracy_of",
    "evaluate_artifacts",
    "failed_result",
    "grade_in_subprocess",
    "unsafe_layers",
]

# Layers whose config carries Python code or bytecode.
_CODE_LAYERS = frozenset({"Lambda", "TFOpLambda", "SlicingOpLambda"})


def unsafe_layers(config: Any) -> list[str]:
    """Names of layers in a saved model config that would run code on load or call."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            cls = node.get("class_name")
            module = node.get("module")
            if isinstance(cls, str) and cls in _CODE_LAYERS:
                found.append(f"{cls} layer")
            elif isinstance(module, str) and module and not module.startswith("keras"):
                found.append(f"custom object {module}.{cls}")
            elif isinstance(node.get("registered_name"), str) and "|" in node["registered_name"]:
                found.append(f"custom object {node['registered_name']}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return sorted(set(found))


def _read_model_config(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("config.json"))


def _prepare(x: np.ndarray, pre: Preprocess) -> np.ndarray:
    if pre.reshape is not None:
        x = x.reshape(pre.reshape)
    return x.astype(pre.dtype) / np.asarray(pre.scale, dtype=pre.dtype)


def accuracy_of(
    model: Any, x: np.ndarray, y: np.ndarray, *, raw: bool = False, pre: Preprocess | None = None
) -> float:
    """Classification accuracy of ``model`` on ``x``; labels may be integers or one-hot."""
    if raw and pre is not None:
        x = _prepare(x, pre)
    pred = np.asarray(model.predict(x, batch_size=1024, verbose=0))
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if pred.ndim != 2 or pred.shape[0] != y.shape[0]:
        raise ValueError(
            f"the model's predictions have shape {pred.shape}; expected ({y.shape[0]}, classes)"
        )
    if not np.isfinite(pred).all():
        raise ValueError("the model predicts NaN or infinite values (did training diverge?)")
    labels = (pred[:, 0] > 0.5).astype(y.dtype) if pred.shape[1] == 1 else pred.argmax(axis=1)
    return float((labels == y).mean())


def failed_result(rubric: Rubric, source: str, reason: str) -> GradingResult:
    """Every check at zero, with the same reason: the submission could not be graded."""
    checks = tuple(CheckResult.failed(c, reason, status="error") for c in rubric.checks)
    return GradingResult(rubric.lab, source, checks, error=reason)


def evaluate_artifacts(lab: str, artifacts: Path) -> GradingResult:
    """Grade one submission from what the capture cell left in ``artifacts``."""
    from .datasets import data_source, load_heldout

    rubric = load_rubric(lab)
    source = data_source(rubric.dataset)
    capture = read_capture(artifacts)
    if capture is None:
        return failed_result(
            rubric,
            source,
            "the notebook did not run to the end (the kernel died or timed out), so the "
            "grader found no trained model",
        )
    problems: dict[str, str] = {}
    for name in capture.get("missing", []):
        problems[name] = f"`{name}` is not defined when the notebook finishes"
    for name, err in dict(capture.get("errors", {})).items():
        problems[name] = f"`{name}` could not be captured: {err}"
    arrays = {k: ArraySummary.from_dict(v) for k, v in dict(capture["arrays"]).items()}

    summary = None
    model = None
    metrics: dict[str, float] = {}
    model_path = artifacts / MODEL_FILE
    mv = rubric.model_variable
    if mv in problems:
        problems["model"] = problems[mv]
    elif not model_path.is_file():
        problems["model"] = f"`{mv}` was not saved by the notebook"
    else:
        try:
            config = _read_model_config(model_path)
            bad = unsafe_layers(config)
            if bad:
                problems["model"] = (
                    f"`{mv}` contains {', '.join(bad)}: code-carrying layers are "
                    "not accepted; use built-in Keras layers only"
                )
            else:
                import keras

                model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
                summary = summarize_model(model)
                compile_config = config.get("compile_config") or {}
                summary = summary.__class__(
                    **{**summary.__dict__, "compile_config": compile_config}
                )
        except Exception as exc:
            problems["model"] = f"`{mv}` could not be loaded safely: {type(exc).__name__}: {exc}"
    if model is not None:
        try:
            x, y = load_heldout(rubric.dataset)
            metrics["accuracy"] = accuracy_of(model, x, y, raw=True, pre=rubric.preprocess)
        except Exception as exc:
            problems["accuracy"] = (
                f"the model could not be evaluated on the held-out data: {_short(exc)}"
            )
    else:
        problems.setdefault("accuracy", problems.get("model", "no model to evaluate"))
    ev = Evidence(summary, arrays, metrics, source, problems)
    return GradingResult(
        lab=lab,
        data_source=source,
        checks=run_checks(rubric, ev),
        metrics=metrics,
        history=dict(capture.get("history", {})),
        model=summary.to_dict() if summary else None,
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]


def grade_in_subprocess(lab: str, artifacts: Path, *, timeout: float = 600) -> GradingResult:
    """Run :func:`evaluate_artifacts` in a fresh interpreter; any failure becomes a result."""
    rubric = load_rubric(lab)
    out = artifacts / "result.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "autograder.evaluate", lab, str(artifacts), "--out", str(out)]
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return failed_result(
            rubric, "unknown", f"grader timed out after {timeout:.0f} s evaluating the model"
        )
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        return failed_result(
            rubric, "unknown", f"grader failed (exit {proc.returncode}): {tail[0][:300]}"
        )
    return GradingResult.from_json(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.evaluate")
    parser.add_argument("lab")
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = evaluate_artifacts(args.lab, args.artifacts)
    args.out.write_text(result.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
