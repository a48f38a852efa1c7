"""Rubric checks. Each takes a check from the rubric and the evidence, returns a result.

The same functions serve two callers: the grader, on evidence extracted in a clean
process from the saved model, and the student's own kernel (``self_check``), on live
objects, for immediate feedback that carries no grading weight.

This module holds the registry of check kinds (:data:`CHECKS`), :func:`run_checks`, and
the checks of the model and its training (architecture, compile, metric, callbacks,
comparison); the evidence they read is :mod:`autograder.grading.evidence`, the checks of
the prepared data :mod:`autograder.grading.input_checks`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from autograder.grading.evidence import Evidence, LayerInfo, leading_preparation
from autograder.grading.input_checks import check_inputs, check_normalisation
from autograder.grading.preparation import shape_text
from autograder.grading.scoring import conceptual_note, score_fraction
from autograder.results import CheckResult
from autograder.rubric import Check, LayerSpec, Rubric

__all__ = [
    "CHECKS",
    "check_architecture",
    "check_callbacks",
    "check_comparison",
    "check_compile",
    "check_metric",
    "run_checks",
]


# --- architecture -----------------------------------------------------------------------


def _layer_matches(spec: LayerSpec, layer: LayerInfo) -> str | None:
    """``None`` when the layer fits the spec, else what differs."""
    if layer.type not in spec.types:
        return f"a {layer.type} layer"
    if spec.units is not None and layer.units != spec.units:
        return f"{layer.type} with {layer.units} units"
    if spec.activation is not None and (layer.activation or "linear") != spec.activation:
        return f"{layer.type} with activation {layer.activation or 'linear'}"
    return None


def _match_exact(specs: tuple[LayerSpec, ...], layers: tuple[LayerInfo, ...]) -> list[str]:
    problems: list[str] = []
    i = 0
    for n, layer in enumerate(layers, start=1):
        while i < len(specs) and specs[i].optional and _layer_matches(specs[i], layer):
            i += 1
        if i >= len(specs):
            problems.append(f"layer {n} ({layer.type}) is extra: the lab's network has no more")
            break
        diff = _layer_matches(specs[i], layer)
        if diff:
            problems.append(f"layer {n}: expected {specs[i].describe()}, found {diff}")
            break
        i += 1
    else:
        missing = [s.describe() for s in specs[i:] if not s.optional]
        if missing:
            problems.append(f"missing layer(s) at the end: {', '.join(missing)}")
    return problems


def _match_subsequence(specs: tuple[LayerSpec, ...], layers: tuple[LayerInfo, ...]) -> list[str]:
    """Each required spec must match a layer, in order; other layers may sit in between."""
    i = 0
    for spec in specs:
        j = i
        while j < len(layers) and _layer_matches(spec, layers[j]):
            j += 1
        if j == len(layers):
            if spec.optional:
                continue
            anywhere = any(_layer_matches(spec, layer) is None for layer in layers)
            where = " where the lab expects it (check the order)" if anywhere else ""
            return [f"no {spec.describe()} layer{where}"]
        i = j + 1
    return []


def _input_dim_problems(specs: tuple[LayerSpec, ...], layers: tuple[LayerInfo, ...]) -> list[str]:
    problems = []
    for spec in specs:
        if spec.max_input_dim is None:
            continue
        for layer in layers:
            if layer.type in spec.types and (layer.input_dim or 0) > spec.max_input_dim:
                problems.append(
                    f"{layer.type} has input_dim={layer.input_dim:,} but the data keeps only "
                    f"the top {spec.max_input_dim:,} words: use input_dim={spec.max_input_dim}"
                )
    return problems


def check_architecture(check: Check, ev: Evidence) -> CheckResult:
    model = ev.model
    if model is None:
        return CheckResult.failed(check, ev.problems.get("model", "no trained model was found"))
    p = check.params
    messages: list[str] = []
    parts: list[str] = []
    failed: list[str] = []
    # Preparation inside the model (Flatten, Rescaling, ...) in front of the lab's layers
    # costs nothing here: the lab's layers are judged from where they start.
    lead = leading_preparation(model)
    layers = model.layers[lead:]
    core_input = model.layers[lead - 1].output_shape[1:] if lead else model.input_shape
    params = model.params - sum(layer.params for layer in model.layers[:lead])
    if "input_shape" in p:
        want = tuple(p["input_shape"])
        parts.append("input_shape")
        if core_input != want and model.input_shape != want:
            failed.append("input_shape")
            got = "unknown" if core_input is None else shape_text(core_input)
            messages.append(
                f"the first layer expects inputs of shape {got}; the lab needs {shape_text(want)}: "
                f"start the network with `keras.Input(shape={shape_text(want)})` and train it on "
                f"arrays of shape {shape_text((None, *want))}"
            )
    match = _match_exact if p.get("match", "exact") == "exact" else _match_subsequence
    layer_problems = match(check.layers, layers) + _input_dim_problems(check.layers, layers)
    parts.append("layers")
    if layer_problems:
        failed.append("layers")
    messages.extend(layer_problems)
    if "output_units" in p or "output_activation" in p:
        last = layers[-1] if layers else None
        units, act = p.get("output_units"), p.get("output_activation")
        ok = last is not None and (units is None or last.units == units)
        if last is not None and act is not None:
            ok = ok and (last.activation or "linear") == act
        parts.append("output")
        if not ok:
            failed.append("output")
            got = "nothing" if last is None else _describe_layer(last, full=True)
            expected = " ".join(str(x) for x in ("Dense", units, act) if x is not None)
            messages.append(
                f"the output layer should be {expected}; found {got}: {_output_fix(units, act)}"
                + conceptual_note(check, "output")
            )
    if "params" in p:
        parts.append("params")
        if params != p["params"]:
            failed.append("params")
            messages.append(f"the network has {params:,} parameters; the lab's has {p['params']:,}")
    if not messages:
        shown = ", ".join(_describe_layer(layer) for layer in layers)
        messages.append(f"architecture as expected: {shown} ({params:,} parameters)")
        if lead:
            front = ", ".join(layer.type for layer in model.layers[:lead])
            messages.append(f"inputs prepared inside the model first ({front}): accepted")
    if layer_problems and p.get("layers_required"):
        # The layer pattern is the point of the lab: without it, the rest earns nothing.
        return CheckResult.scored(check, 0.0, messages)
    return CheckResult.scored(check, score_fraction(check, parts, failed), messages)


# Why the lab's output layer is what it is, by activation.
_OUTPUT_WHY = {
    "linear": "no activation, so that it can predict any value",
    "softmax": "one probability per class, summing to 1",
    "sigmoid": "the probability of the positive class, between 0 and 1",
}


def _output_fix(units: int | None, activation: str | None) -> str:
    args = [str(units if units is not None else "...")]
    if activation is not None and activation != "linear":
        args.append(f'activation="{activation}"')
    why = _OUTPUT_WHY.get(activation or "")
    return f"end the network with `layers.Dense({', '.join(args)})`" + (f" ({why})" if why else "")


def _describe_layer(layer: LayerInfo, full: bool = False) -> str:
    bits = [layer.type]
    if layer.units is not None:
        bits.append(str(layer.units))
    if layer.activation and (full or layer.activation != "linear"):
        bits.append(layer.activation)
    return " ".join(bits)


# --- compile ----------------------------------------------------------------------------

_METRIC_ALIASES = {
    "acc": "accuracy",
    "categorical_accuracy": "accuracy",
    "sparse_categorical_accuracy": "accuracy",
    "binary_accuracy": "accuracy",
    "mean_absolute_error": "mae",
    "mean_squared_error": "mse",
}
_LOSS_ALIASES = {"mean_squared_error": "mse", "mean_absolute_error": "mae"}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _name_of(item: Any) -> str:
    if isinstance(item, Mapping):
        item = item.get("class_name") or item.get("config", {}).get("name") or ""
        return _snake(str(item))
    return str(item).lower()


def _compile_argument(key: str, allowed: list[Any]) -> str:
    """The ``compile()`` argument that fixes ``key``, written as the student would."""
    if key == "optimizers":
        return f'`optimizer="{str(allowed[0]).lower()}"`'
    if key == "losses":
        return f'`loss="{allowed[0]}"`'
    return "`metrics=[" + ", ".join(f'"{m}"' for m in allowed) + "]`"


def check_compile(check: Check, ev: Evidence) -> CheckResult:
    model = ev.model
    if model is None:
        return CheckResult.failed(check, ev.problems.get("model", "no trained model was found"))
    cfg = model.compile_config
    if not cfg:
        return CheckResult.failed(
            check, "the network was never compiled: call compile() before fit()"
        )
    p = check.params
    messages: list[str] = []
    failed: list[str] = []
    wanted = [(k, p[k]) for k in ("optimizers", "losses", "metrics") if k in p]
    aspect_of = {"optimizers": "optimizer", "losses": "loss", "metrics": "metrics"}
    for key, allowed in wanted:
        if key == "optimizers":
            got = {_name_of(cfg.get("optimizer")).replace("_", "")}
            allow = {str(a).lower().replace("_", "") for a in allowed}
            label = "optimizer"
        elif key == "losses":
            name = _name_of(cfg.get("loss"))
            got = {_LOSS_ALIASES.get(name, name)}
            allow = {_LOSS_ALIASES.get(_snake(str(a)), _snake(str(a))) for a in allowed}
            label = "loss"
        else:
            raw = cfg.get("metrics") or []
            raw = raw if isinstance(raw, list) else [raw]
            got = {_METRIC_ALIASES.get(_name_of(m), _name_of(m)) for m in raw}
            allow = {_METRIC_ALIASES.get(str(a), str(a)) for a in allowed}
            label = "metrics"
        if not ((key == "metrics" and allow <= got) or (key != "metrics" and got & allow)):
            failed.append(aspect_of[key])
            shown = ", ".join(sorted(got)) or "none"
            why = ""
            if key == "losses" and "loss" in p.get("conceptual", ()):
                why = ": it does not match the network's output and the labels"
            messages.append(
                f"{label}: found {shown}; the lab uses {', '.join(map(str, allowed))}{why}: "
                f"pass {_compile_argument(key, allowed)} to compile()"
                + conceptual_note(check, aspect_of[key])
            )
    if not messages:
        messages.append("compiled as expected")
    parts = [aspect_of[k] for k, _ in wanted]
    return CheckResult.scored(check, score_fraction(check, parts, failed), messages)


# --- held-out metric --------------------------------------------------------------------

_METRIC_NAMES = {"accuracy": "accuracy", "mae": "mean absolute error"}


def check_metric(check: Check, ev: Evidence) -> CheckResult:
    metric = check.params["metric"]
    label = f"held-out {_METRIC_NAMES[metric]}"
    value = ev.metrics.get(metric)
    if value is None:
        return CheckResult.failed(
            check, ev.problems.get(metric, f"the {label} could not be computed")
        )
    types = [layer.type for layer in ev.model.layers] if ev.model is not None else []
    th = check.threshold(ev.data_source, types)
    fraction = th.fraction(value)
    better = "at least" if th.higher_is_better else "at most"
    target = f"the lab's target for a {th.variant} network" if th.variant else "the lab's target"
    if fraction >= 1.0:
        msg = f"{label} {value:.4f} meets {target} ({better} {th.full:g})"
    elif fraction <= 0.0:
        msg = (
            f"{label} {value:.4f}: no credit beyond {th.zero:g} (the lab expects {better} "
            f"{th.full:g}); the model has not learned enough: check the preprocessing and "
            "the training"
        )
    else:
        msg = (
            f"{label} {value:.4f} misses {target} ({better} {th.full:g}): partial "
            "credit; train longer or check the preprocessing"
        )
    return CheckResult.scored(check, fraction, [msg, *([ev.preparation] if ev.preparation else [])])


# --- callbacks --------------------------------------------------------------------------


_CALLBACK_EXAMPLES = {
    "EarlyStopping": 'keras.callbacks.EarlyStopping(monitor="val_loss", patience=10)',
}


def check_callbacks(check: Check, ev: Evidence) -> CheckResult:
    """A callback counts when a fit() call received it, inline or from a variable: from
    the record of fit() calls. (A callback merely attached to a model, ``set_model``, was
    never passed to fit.) Captures without a record fall back to the callbacks found in
    the notebook's variables."""
    required = list(check.params.get("required", []))
    if ev.fit_calls is not None:
        used = {str(name) for call in ev.fit_calls for name in call.get("callbacks", [])}
        unused = {c["class"] for c in ev.callbacks} - used
    else:
        used = {c["class"] for c in ev.callbacks if c.get("used")}
        unused = {c["class"] for c in ev.callbacks if not c.get("used")}
    messages = []
    hits = 0
    for name in required:
        if name in used:
            hits += 1
        elif name in unused:
            article = "an" if name[:1] in "AEIOU" else "a"
            messages.append(
                f"{article} {name} callback was created but never passed to fit(callbacks=...)"
            )
        else:
            example = _CALLBACK_EXAMPLES.get(name, f"keras.callbacks.{name}(...)")
            messages.append(
                f"no {name} callback in fit(): create one, e.g. `{example}`, and pass it with "
                "`fit(..., callbacks=[...])`"
            )
    if not messages:
        messages.append("callbacks used in fit: " + ", ".join(sorted(used)))
    return CheckResult.scored(check, hits / max(1, len(required)), messages)


# --- a comparison of two training runs --------------------------------------------------


def _close(a: float, b: float, rel: float = 1e-6) -> bool:
    return abs(a - b) <= rel * max(1.0, abs(b))


def check_comparison(check: Check, ev: Evidence) -> CheckResult:
    """Both runs were trained, and the comparison holds their final figures."""
    p = check.params
    metric = p.get("history_metric", "val_mae")
    names = list(p["histories"])
    finals: dict[str, float] = {}
    messages = []
    # What fit() returned, as the recorder saw it: a History counts only if a fit() call
    # returned one ending on the same figures (no record: older captures, not checked).
    returned = (
        None
        if ev.fit_calls is None
        else [c["final"].get(metric) for c in ev.fit_calls if isinstance(c.get("final"), dict)]
    )
    for name in names:
        value = ev.values.get(name, {})
        series = value.get("history", {}).get(metric) if value.get("type") == "history" else None
        if not series:
            messages.append(
                ev.missing(name, f"a History with '{metric}'")
                if value.get("type") != "history"
                else f"`{name}` has no '{metric}': train with validation data"
            )
        elif returned is not None and not any(
            isinstance(r, int | float) and _close(r, float(series[-1])) for r in returned
        ):
            messages.append(f"`{name}` was not returned by any fit() call of the notebook")
        else:
            finals[name] = float(series[-1])
    runs_ok = len(finals) == len(names)
    compared_ok = False
    comp_name = p["comparison"]
    comp = ev.values.get(comp_name, {})
    if comp.get("type") != "mapping":
        messages.append(ev.missing(comp_name, "a dict or DataFrame of final results"))
    elif runs_ok:
        recorded = [v for v in comp["value"].values() if v is not None]
        compared_ok = all(any(_close(v, f, 1e-3) for v in recorded) for f in finals.values())
        if not compared_ok:
            messages.append(
                f"`{comp_name}` does not hold the final {metric} of "
                + " and ".join(f"`{n}`" for n in names)
            )
    if not messages:
        shown = ", ".join(f"{n} {v:.3f}" for n, v in finals.items())
        messages.append(f"both runs made and compared (final {metric}: {shown})")
    return CheckResult.scored(check, (runs_ok + compared_ok) / 2, messages)


CHECKS: dict[str, Callable[[Check, Evidence], CheckResult]] = {
    "architecture": check_architecture,
    "compile": check_compile,
    "inputs": check_inputs,
    "metric": check_metric,
    "normalisation": check_normalisation,
    "callbacks": check_callbacks,
    "comparison": check_comparison,
}


def run_checks(rubric: Rubric, ev: Evidence) -> tuple[CheckResult, ...]:
    """Run every check of the rubric; a crashing check becomes an error result, not a crash."""
    results = []
    for check in rubric.checks:
        try:
            results.append(CHECKS[check.kind](check, ev))
        except Exception as exc:  # one broken check must not lose the others
            results.append(
                CheckResult.failed(
                    check, f"grader error: {type(exc).__name__}: {exc}", status="error"
                )
            )
    return tuple(results)
