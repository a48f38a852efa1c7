"""Rubric checks. Each takes a check from the rubric and the evidence, returns a result.

The same functions serve two callers: the grader, on evidence extracted in a clean
process from the saved model, and the student's own kernel (``self_check``), on live
objects, for immediate feedback that carries no grading weight.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .results import CheckResult
from .rubric import Check, LayerSpec, Rubric, load_rubric

__all__ = [
    "ArraySummary",
    "Evidence",
    "LayerInfo",
    "ModelSummary",
    "run_checks",
    "self_check",
    "summarize_array",
    "summarize_model",
]

_SKIPPED_LAYERS = frozenset({"InputLayer"})


@dataclass(frozen=True)
class LayerInfo:
    type: str
    units: int | None
    activation: str | None
    output_shape: tuple[int | None, ...]
    params: int


@dataclass(frozen=True)
class ModelSummary:
    class_name: str
    input_shape: tuple[int | None, ...] | None  # without the batch axis
    output_shape: tuple[int | None, ...] | None
    layers: tuple[LayerInfo, ...]
    params: int
    compile_config: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ArraySummary:
    shape: tuple[int, ...]
    dtype: str
    min: float | None
    max: float | None
    finite: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ArraySummary:
        return cls(tuple(d["shape"]), d["dtype"], d["min"], d["max"], d["finite"])


@dataclass(frozen=True)
class Evidence:
    """What the checks look at. ``None`` means it could not be obtained; ``problems`` says why."""

    model: ModelSummary | None
    arrays: dict[str, ArraySummary] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    data_source: str = "offline"
    problems: dict[str, str] = field(default_factory=dict)


def _shape(shape: Any) -> tuple[int | None, ...] | None:
    if shape is None:
        return None
    return tuple(None if d is None else int(d) for d in shape)


def summarize_model(model: Any) -> ModelSummary:
    """Describe a Keras 3 model with public APIs only (``layer.output.shape``, ``count_params``)."""
    layers = []
    for layer in model.layers:
        name = type(layer).__name__
        if name in _SKIPPED_LAYERS:
            continue
        config = layer.get_config()
        activation = config.get("activation")
        units = config.get("units", config.get("filters"))
        try:
            out = _shape(layer.output.shape)
        except (AttributeError, ValueError):
            out = ()
        layers.append(
            LayerInfo(
                type=name,
                units=int(units) if isinstance(units, int) else None,
                activation=activation if isinstance(activation, str) else None,
                output_shape=out or (),
                params=int(layer.count_params()) if layer.built else 0,
            )
        )
    try:
        inputs = model.inputs
        input_shape = _shape(inputs[0].shape)[1:] if inputs else None  # type: ignore[index]
        output_shape = _shape(model.outputs[0].shape)
    except (AttributeError, ValueError, IndexError, TypeError):
        input_shape, output_shape = None, None
    compile_config: dict[str, Any] = {}
    if getattr(model, "compiled", False):
        try:
            compile_config = model.get_compile_config() or {}
        except Exception:  # a half-compiled model must not stop the summary
            compile_config = {}
    return ModelSummary(
        class_name=type(model).__name__,
        input_shape=input_shape,
        output_shape=output_shape,
        layers=tuple(layers),
        params=int(model.count_params()) if model.built else 0,
        compile_config=_jsonable(compile_config),
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def summarize_array(value: Any) -> ArraySummary:
    arr = np.asarray(value)
    numeric = arr.size > 0 and np.issubdtype(arr.dtype, np.number)
    finite = bool(np.isfinite(arr).all()) if numeric else True
    return ArraySummary(
        shape=tuple(int(d) for d in arr.shape),
        dtype=str(arr.dtype),
        min=float(np.nanmin(arr)) if numeric else None,
        max=float(np.nanmax(arr)) if numeric else None,
        finite=finite,
    )


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
    i = 0
    for spec in specs:
        while i < len(layers) and _layer_matches(spec, layers[i]):
            i += 1
        if i == len(layers):
            if spec.optional:
                continue
            return [f"no {spec.describe()} layer where the lab expects one (in this order)"]
        i += 1
    return []


def check_architecture(check: Check, ev: Evidence) -> CheckResult:
    model = ev.model
    if model is None:
        return CheckResult.failed(check, ev.problems.get("model", "no trained model was found"))
    p = check.params
    messages: list[str] = []
    parts = 0
    total = 3
    want_input = tuple(p["input_shape"]) if "input_shape" in p else None
    if want_input is not None and model.input_shape != want_input:
        got = "unknown" if model.input_shape is None else _fmt_shape(model.input_shape)
        messages.append(
            f"the first layer expects inputs of shape {got}; the lab needs {_fmt_shape(want_input)}"
        )
    else:
        parts += 1
    match = _match_exact if p.get("match", "exact") == "exact" else _match_subsequence
    layer_problems = match(check.layers, model.layers)
    if layer_problems:
        messages.extend(layer_problems)
    else:
        parts += 1
    want_params = p.get("params")
    if want_params is not None and model.params != want_params:
        messages.append(
            f"the network has {model.params:,} parameters; the lab's has {want_params:,}"
        )
    else:
        parts += 1
    if not messages:
        layers = ", ".join(_describe_layer(layer) for layer in model.layers)
        messages.append(f"architecture as expected: {layers} ({model.params:,} parameters)")
    return CheckResult.scored(check, parts / total, messages)


def _describe_layer(layer: LayerInfo) -> str:
    bits = [layer.type]
    if layer.units is not None:
        bits.append(str(layer.units))
    if layer.activation and layer.activation != "linear":
        bits.append(layer.activation)
    return " ".join(bits)


def _fmt_shape(shape: tuple[int | None, ...]) -> str:
    inner = ", ".join("n" if d is None or d == -1 else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


# --- compile ----------------------------------------------------------------------------

_METRIC_ALIASES = {
    "acc": "accuracy",
    "categorical_accuracy": "accuracy",
    "sparse_categorical_accuracy": "accuracy",
    "binary_accuracy": "accuracy",
    "mean_absolute_error": "mae",
    "mean_squared_error": "mse",
}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _name_of(item: Any) -> str:
    if isinstance(item, Mapping):
        item = item.get("class_name") or item.get("config", {}).get("name") or ""
        return _snake(str(item))
    return str(item).lower()


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
    ok = 0
    wanted = [(k, p[k]) for k in ("optimizers", "losses", "metrics") if k in p]
    for key, allowed in wanted:
        if key == "optimizers":
            got = {_name_of(cfg.get("optimizer")).replace("_", "")}
            allow = {str(a).lower().replace("_", "") for a in allowed}
            label = "optimizer"
        elif key == "losses":
            got = {_name_of(cfg.get("loss"))}
            allow = {_snake(str(a)) for a in allowed}
            label = "loss"
        else:
            raw = cfg.get("metrics") or []
            raw = raw if isinstance(raw, list) else [raw]
            got = {_METRIC_ALIASES.get(_name_of(m), _name_of(m)) for m in raw}
            allow = {_METRIC_ALIASES.get(str(a), str(a)) for a in allowed}
            label = "metrics"
        if (key == "metrics" and allow <= got) or (key != "metrics" and got & allow):
            ok += 1
        else:
            shown = ", ".join(sorted(got)) or "none"
            messages.append(f"{label}: found {shown}; the lab uses {', '.join(map(str, allowed))}")
    if not messages:
        messages.append("compiled as expected")
    return CheckResult.scored(check, ok / max(1, len(wanted)), messages)


# --- inputs -----------------------------------------------------------------------------


def _shape_ok(got: tuple[int, ...], want: list[int]) -> bool:
    return len(got) == len(want) and all(w == -1 or g == w for g, w in zip(got, want, strict=True))


def check_inputs(check: Check, ev: Evidence) -> CheckResult:
    p = check.params
    name = p["variable"]
    arr = ev.arrays.get(name)
    if arr is None:
        why = ev.problems.get(name, f"`{name}` is not defined when the notebook finishes")
        return CheckResult.failed(check, why)
    messages: list[str] = []
    items = 0
    total = 0
    if "shape" in p:
        total += 1
        if _shape_ok(arr.shape, p["shape"]):
            items += 1
        else:
            messages.append(
                f"`{name}` has shape {_fmt_shape(arr.shape)}; reshape it to "
                f"{_fmt_shape(tuple(p['shape']))}"
                + (" (one row of 28 * 28 = 784 pixels per image)" if len(arr.shape) == 3 else "")
            )
    if "dtype" in p:
        total += 1
        if arr.dtype == p["dtype"]:
            items += 1
        else:
            messages.append(f"`{name}` is {arr.dtype}; convert it with .astype('{p['dtype']}')")
    if "min" in p or "max" in p:
        total += 1
        lo, hi = p.get("min"), p.get("max")
        if arr.min is None or arr.max is None or not arr.finite:
            messages.append(f"`{name}` holds non-numeric or non-finite values")
        elif (lo is not None and arr.min < lo - 1e-6) or (hi is not None and arr.max > hi + 1e-6):
            messages.append(
                f"`{name}` values range from {arr.min:g} to {arr.max:g}; scale them into "
                f"[{lo:g}, {hi:g}] (divide the pixel values by 255)"
            )
        elif hi is not None and arr.max < 0.5 * hi:
            messages.append(
                f"`{name}` values only reach {arr.max:g}; scaled once they should reach about "
                f"{hi:g} (were they divided twice?)"
            )
        else:
            items += 1
    if "labels" in p:
        total += 1
        lab_name = p["labels"]
        labels = ev.arrays.get(lab_name)
        if labels is None:
            messages.append(ev.problems.get(lab_name, f"`{lab_name}` is not defined"))
        elif "labels_shape" in p and not _shape_ok(labels.shape, p["labels_shape"]):
            want = _fmt_shape(tuple(p["labels_shape"]))
            messages.append(
                f"`{lab_name}` has shape {_fmt_shape(labels.shape)}; expected {want}"
                + (" (one-hot encode with to_categorical)" if len(labels.shape) == 1 else "")
            )
        else:
            items += 1
    if not messages:
        messages.append(
            f"`{name}` is {_fmt_shape(arr.shape)} {arr.dtype} in "
            f"[{arr.min:g}, {arr.max:g}] as expected"
        )
    return CheckResult.scored(check, items / max(1, total), messages)


# --- held-out metric --------------------------------------------------------------------


def check_accuracy(check: Check, ev: Evidence) -> CheckResult:
    value = ev.metrics.get("accuracy")
    if value is None:
        return CheckResult.failed(
            check, ev.problems.get("accuracy", "the held-out accuracy could not be computed")
        )
    th = check.threshold(ev.data_source)
    fraction = th.fraction(value)
    if fraction >= 1.0:
        msg = f"held-out accuracy {value:.4f} reaches the lab's {th.full:.3f}"
    elif fraction <= 0.0:
        msg = (
            f"held-out accuracy {value:.4f} is at or below {th.zero:.3f}: the model has not "
            f"learned enough (the lab expects {th.full:.3f}); check scaling and training"
        )
    else:
        msg = (
            f"held-out accuracy {value:.4f} is below the lab's {th.full:.3f}: partial credit "
            f"(train longer or check the preprocessing)"
        )
    return CheckResult.scored(check, fraction, [msg])


CHECKS: dict[str, Callable[[Check, Evidence], CheckResult]] = {
    "architecture": check_architecture,
    "compile": check_compile,
    "inputs": check_inputs,
    "accuracy": check_accuracy,
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


def self_check(lab: str, check_id: str, namespace: Mapping[str, Any]) -> CheckResult:
    """Run one rubric check in the student's kernel on live objects, for feedback only.

    Raises ``AssertionError`` with the check's messages when it does not pass, as a visible
    nbgrader test does. The held-out accuracy is not available here: the accuracy check
    uses the student's own test split, a preview, never the grade.
    """
    rubric = load_rubric(lab)
    check = rubric.check(check_id)
    model = namespace.get(rubric.model_variable)
    problems: dict[str, str] = {}
    summary = None
    if model is None:
        problems["model"] = f"`{rubric.model_variable}` is not defined"
    else:
        try:
            summary = summarize_model(model)
        except Exception as exc:
            problems["model"] = f"`{rubric.model_variable}` is not a Keras model ({exc})"
    arrays = {}
    for c in rubric.checks:
        for key in ("variable", "labels"):
            var = c.params.get(key)
            if isinstance(var, str) and var in namespace:
                arrays[var] = summarize_array(namespace[var])
    metrics: dict[str, float] = {}
    if check.kind == "accuracy" and summary is not None and "test_images" in namespace:
        from .evaluate import accuracy_of  # heavy: only when asked

        metrics["accuracy"] = accuracy_of(
            model, namespace["test_images"], namespace["test_labels"], raw=False
        )
    from .datasets import data_source

    ev = Evidence(summary, arrays, metrics, data_source(rubric.dataset), problems)
    result = CHECKS[check.kind](check, ev)
    print(f"[{result.status}] {result.title}: {result.score:g}/{result.points:g}")
    for m in result.messages:
        print(f"  - {m}")
    if result.status != "pass":
        raise AssertionError("; ".join(result.messages))
    return result
