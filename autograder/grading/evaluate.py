"""Grade captured artifacts in a clean process: from the capture to the grading result.

The grading pipeline runs :func:`evaluate_artifacts` in a child of an evaluator server
(:mod:`autograder.grading.evaluation_server`), under another account and limits, so that neither the
student's kernel nor a crafted model file can touch the process that records grades.
``python -m autograder.grading.evaluate LAB ARTIFACTS --out RESULT.json`` runs it directly, for
a look at one capture by hand.

This module assembles the steps: the files checked and the model loaded
(:mod:`autograder.grading.artifacts`), the evidence built
(:mod:`autograder.grading.evidence`), the metrics computed (:mod:`autograder.grading.metrics`),
the checks run (:mod:`autograder.grading.checks`) and the reasons for review added.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from autograder.fstree import write_fresh
from autograder.grading.artifacts import (
    artifacts_problem,
    load_model_safely,
    optimizer_iterations,
    read_model_config,
    read_samples,
)
from autograder.grading.capture import MODEL_FILE, read_capture
from autograder.grading.checks import run_checks
from autograder.grading.evidence import Evidence, summarize_model
from autograder.grading.metrics import (
    choose_preparation,
    heldout_evaluation,
    model_normalisation,
    normalises,
    reference_figures,
    rubric_metrics,
    standard_preparation,
    standard_prepare,
    witness_metrics,
)
from autograder.grading.review import memorisation, training_record
from autograder.results import CheckResult, GradingResult
from autograder.rubric import Rubric, load_rubric

__all__ = ["evaluate_artifacts", "evidence_from_capture", "failed_result"]


def _capture_problems(capture: dict[str, Any]) -> dict[str, str]:
    problems = {}
    for name in capture.get("missing", []):
        problems[name] = f"`{name}` is not defined when the notebook finishes"
    for name, err in dict(capture.get("errors", {})).items():
        problems[name] = f"`{name}` could not be captured: {err}"
    return problems


def evidence_from_capture(
    rubric: Rubric,
    artifacts: Path,
    *,
    metrics: dict[str, float] | None = None,
    problems: dict[str, str] | None = None,
    heldout: bool = False,
) -> Evidence:
    """Evidence for the checks from a capture folder; with ``heldout``, score held-out data."""
    ev, _, _ = _evidence_and_figures(rubric, artifacts, metrics, problems, heldout)
    return ev


def _evidence_and_figures(
    rubric: Rubric,
    artifacts: Path,
    metrics: dict[str, float] | None,
    problems: dict[str, str] | None,
    heldout: bool,
) -> tuple[Evidence, dict[str, Any], dict[str, dict[str, float]]]:
    from autograder.data.loaders import data_source

    capture = read_capture(artifacts) or {}
    problems = {**_capture_problems(capture), **(problems or {})}
    model = load_model_safely(rubric, artifacts, problems)
    summary = None
    metrics = dict(metrics or {})
    figures: dict[str, Any] = {}
    witnesses: dict[str, dict[str, float]] = {}
    preparation = ""
    if model is not None:
        summary = summarize_model(model)
        config = read_model_config(artifacts / MODEL_FILE)
        summary = replace(summary, compile_config=config.get("compile_config") or {})
        if heldout:
            prepare, preparation, learned = choose_preparation(rubric, read_samples(artifacts))
            how = "as the notebook's arrays" if learned else "as the lab asks"
            found, failed, figures, ran = heldout_evaluation(rubric, model, prepare, how)
            if not ran and learned:
                # The arrays' form does not fit the model (they changed after training, say):
                # the lab's own preparation may.
                standard = standard_prepare(rubric)
                again = heldout_evaluation(rubric, model, standard)
                if again[3]:
                    found, failed, figures, _ = again
                    prepare = standard
                    preparation = (
                        f"held-out inputs prepared as the lab asks: "
                        f"{standard_preparation(rubric)}; the form of the notebook's arrays "
                        "does not fit the model"
                    )
                else:
                    lab_form = standard_preparation(rubric)
                    failed = {
                        k: f"{v}; prepared as the lab asks ({lab_form}), it could not be run either"
                        for k, v in failed.items()
                    }
            metrics.update(found)
            problems.update(failed)
            history = capture.get("history")
            if found:
                witnesses = witness_metrics(rubric, model, _as_dict(history), prepare)
    for metric in rubric_metrics(rubric):
        if metric not in metrics:
            problems.setdefault(metric, problems.get("model", "no model to evaluate"))
    ev = Evidence(
        model=summary,
        values=dict(capture.get("values", {})),
        metrics=metrics,
        data_source=data_source(rubric.dataset),
        problems=problems,
        callbacks=tuple(capture.get("callbacks", [])),
        fit_calls=(
            tuple(c for c in capture["fit_calls"] if isinstance(c, dict))
            if isinstance(capture.get("fit_calls"), list)
            else None
        ),
        reference={
            **reference_figures(rubric),
            **(model_normalisation(model) if model is not None and normalises(rubric) else {}),
        },
        preparation=preparation,
    )
    return ev, figures, witnesses


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _review(
    rubric: Rubric,
    ev: Evidence,
    capture: dict[str, Any],
    witnesses: dict[str, dict[str, float]],
    iterations: int | None,
    heldout_examples: int | None = None,
) -> tuple[str, ...]:
    reasons = []
    validation = _validation_examples(ev.fit_calls)
    for check in rubric.checks:
        metric = check.params.get("metric")
        if check.kind != "metric" or metric not in ev.metrics:
            continue
        threshold = check.thresholds.get(ev.data_source)
        if threshold is not None and ev.model is not None:
            threshold = check.threshold(ev.data_source, [la.type for la in ev.model.layers])
        if threshold is not None:
            value = ev.metrics[metric]
            seen = {**witnesses.get(metric, {}), **validation}
            reasons += memorisation(threshold, metric, value, seen, heldout_examples)
    reasons += training_record(
        rubric.model_variable,
        ev.fit_calls,
        _as_dict(capture.get("history")),
        iterations if ev.model is not None else None,
    )
    return tuple(reasons)


def _validation_examples(fit_calls: tuple[dict[str, Any], ...] | None) -> dict[str, float]:
    """The size of the validation data of the graded model's last fit() that had some, as
    the kernel recorded it (``validation_examples``), where it did."""
    for call in reversed(fit_calls or ()):
        n = call.get("validation_examples")
        if call.get("graded_model") and isinstance(n, int) and n > 0:
            return {"validation_examples": float(n)}
    return {}


def failed_result(rubric: Rubric, source: str, reason: str) -> GradingResult:
    """Every check at zero, with the same reason: the submission could not be graded."""
    checks = tuple(CheckResult.failed(c, reason, status="error") for c in rubric.checks)
    return GradingResult(rubric.lab, source, checks, error=reason, rubric=rubric.version)


def evaluate_artifacts(lab: str, artifacts: Path, rubric: Rubric | None = None) -> GradingResult:
    """Grade one submission from what the capture cell left in ``artifacts`` (with
    ``rubric``, read before the caller gave up its privileges; else the lab's)."""
    from autograder.data.loaders import data_source

    rubric = rubric or load_rubric(lab)
    problem = artifacts_problem(artifacts)
    if problem is not None:
        return failed_result(
            rubric,
            data_source(rubric.dataset),
            f"the files the notebook left for grading were not read: {problem}",
        )
    capture = read_capture(artifacts)
    if capture is None:
        from autograder.sandbox.stops import read_stop

        # A kernel stopped by a limit left its reason: that is what the student must read.
        limit = read_stop(artifacts)
        return failed_result(
            rubric,
            data_source(rubric.dataset),
            f"{limit}, so the grader found no trained model"
            if limit
            else "the notebook did not run to the end (the kernel died or timed out), so the "
            "grader found no trained model",
        )
    ev, figures, witnesses = _evidence_and_figures(rubric, artifacts, None, None, heldout=True)
    iterations = optimizer_iterations(artifacts / MODEL_FILE)
    return GradingResult(
        lab=lab,
        data_source=ev.data_source,
        checks=run_checks(rubric, ev),
        metrics=ev.metrics,
        history=dict(capture.get("history", {})),
        model=ev.model.to_dict() if ev.model else None,
        figures=figures,
        witnesses={
            f"{metric}@{name}": round(value, 6)
            for metric, values in witnesses.items()
            for name, value in values.items()
        },
        review=_review(rubric, ev, capture, witnesses, iterations, figures.get("heldout_examples")),
        preparation=ev.preparation,
        rubric=rubric.version,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.grading.evaluate")
    parser.add_argument("lab")
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = evaluate_artifacts(args.lab, args.artifacts)
    write_fresh(args.out, result.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
