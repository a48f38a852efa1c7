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

from autograder.grading.preparation import shape_text
from autograder.results import CheckResult
from autograder.rubric import Check, LayerSpec, Rubric

__all__ = [
    "ArraySummary",
    "Evidence",
    "LayerInfo",
    "ModelSummary",
    "run_checks",
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
    input_dim: int | None = None  # Embedding's vocabulary size


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
    """What the checks look at. ``None`` means it could not be obtained; ``problems`` says why.

    ``values`` holds the capture's description of each notebook variable the rubric names
    (``{"type": "array" | "history" | "mapping" | "number", ...}``); ``reference`` holds
    figures the grader computed from its own copy of the data.
    """

    model: ModelSummary | None
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    data_source: str = "offline"
    problems: dict[str, str] = field(default_factory=dict)
    callbacks: tuple[dict[str, Any], ...] = ()
    # What each fit() call received, recorded in the kernel as it ran; None when there is
    # no record (a capture made before the recorder existed).
    fit_calls: tuple[dict[str, Any], ...] | None = None
    reference: dict[str, Any] = field(default_factory=dict)
    # How the held-out inputs were prepared for the model (grading.evaluate._preparation).
    preparation: str = ""

    def array(self, name: str) -> ArraySummary | None:
        value = self.values.get(name)
        if value is None or value.get("type", "array") != "array":
            return None
        return ArraySummary.from_dict(value)

    def missing(self, name: str, what: str = "") -> str:
        if name in self.problems:
            return self.problems[name]
        if name in self.values:
            return f"`{name}` is not {what or 'what the lab expects'}"
        return f"`{name}` is not defined when the notebook finishes"


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
                input_dim=config.get("input_dim")
                if isinstance(config.get("input_dim"), int)
                else None,
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
            got = "unknown" if core_input is None else _fmt_shape(core_input)
            messages.append(
                f"the first layer expects inputs of shape {got}; the lab needs {_fmt_shape(want)}: "
                f"start the network with `keras.Input(shape={_fmt_shape(want)})` and train it on "
                f"arrays of shape {_fmt_shape((None, *want))}"
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
                + _conceptual(check, "output")
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
    return CheckResult.scored(check, _fraction(check, parts, failed), messages)


# Layers that prepare the inputs rather than learn from them: in front of the lab's layers
# they are another way of writing the preparation the lab does on the arrays.
PREPARATION_LAYERS = frozenset({"Flatten", "Reshape", "Rescaling", "Normalization"})


def leading_preparation(model: ModelSummary) -> int:
    """How many of the model's first layers only prepare its inputs."""
    n = 0
    while n < len(model.layers) and model.layers[n].type in PREPARATION_LAYERS:
        n += 1
    return n if n < len(model.layers) else 0


def _fraction(check: Check, parts: list[str], failed: list[str]) -> float:
    """What is left of the check once each failed aspect has cost its share: the rubric's
    ``costs``, else an equal share of the aspects checked."""
    costs = check.params.get("costs", {})
    default = 1.0 / max(1, len(parts))
    return max(0.0, 1.0 - sum(float(costs.get(a, default)) for a in dict.fromkeys(failed)))


def _conceptual(check: Check, aspect: str) -> str:
    if aspect not in check.params.get("conceptual", ()):
        return ""
    share = float(check.params["costs"][aspect])
    lost = share * check.points
    points = "point" if check.points == 1 else "points"
    return f" (a conceptual error this lab teaches: {lost:g} of {check.points:g} {points})"


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


_fmt_shape = shape_text  # the shape as students write it, one rule for every message


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
                + _conceptual(check, aspect_of[key])
            )
    if not messages:
        messages.append("compiled as expected")
    parts = [aspect_of[k] for k, _ in wanted]
    return CheckResult.scored(check, _fraction(check, parts, failed), messages)


# --- inputs -----------------------------------------------------------------------------


def _shape_ok(got: tuple[int, ...], want: list[int]) -> bool:
    return len(got) == len(want) and all(w == -1 or g == w for g, w in zip(got, want, strict=True))


def check_inputs(check: Check, ev: Evidence) -> CheckResult:
    p = check.params
    name = p["variable"]
    arr = ev.array(name)
    if arr is None:
        return CheckResult.failed(check, ev.missing(name, "an array"))
    if arr.dtype == "object":
        return CheckResult.failed(
            check,
            f"`{name}` is a list of sequences of different lengths, not a tensor: pad them "
            f"to one length with {_pad_call(name, p.get('shape'))}",
        )
    messages: list[str] = []
    parts: list[str] = []
    failed: list[str] = []
    front = _front_layers(ev.model)
    images = bool(p.get("scaled"))
    if "shape" in p:
        parts.append("shape")
        want = list(p["shape"])
        if not _shape_ok(arr.shape, want):
            aspect = _shape_aspect(arr.shape, want, ev.model, front, images=images)
            failed.append(aspect)
            if aspect == "reshaped_in_model":
                messages.append(
                    f"`{name}` has shape {_fmt_shape(arr.shape)}, not the lab's "
                    f"{_fmt_shape(tuple(want))}; the model reshapes it itself "
                    f"({', '.join(front)} first), which works" + _variant_cost(check, aspect)
                )
            else:
                hint = _shape_hint(name, arr.shape, want, images=images)
                messages.append(
                    f"`{name}` has shape {_fmt_shape(arr.shape)}; expected "
                    f"{_fmt_shape(tuple(want))}{hint}" + _conceptual(check, aspect)
                )
    if "dtype" in p:
        allowed = [p["dtype"]] if isinstance(p["dtype"], str) else list(p["dtype"])
        parts.append("dtype")
        if arr.dtype not in allowed:
            failed.append("dtype")
            messages.append(
                f'`{name}` is {arr.dtype}; convert it with `{name} = {name}.astype("{allowed[0]}")`'
            )
    if "min" in p or "max" in p:
        lo, hi = p.get("min"), p.get("max")
        parts.append("range")
        problem = ""
        if arr.min is None or arr.max is None or not arr.finite:
            problem = f"`{name}` holds non-numeric or non-finite values"
        elif (lo is not None and arr.min < lo - 1e-6) or (hi is not None and arr.max > hi + 1e-6):
            scaled_inside = [t for t in front if t in ("Rescaling", "Normalization")]
            if images and scaled_inside:
                failed.append("scaled_in_model")
                messages.append(
                    f"`{name}` keeps values from {arr.min:g} to {arr.max:g}, not the lab's "
                    f"[{lo:g}, {hi:g}]; the model scales them itself ({scaled_inside[0]} "
                    "first), which works" + _variant_cost(check, "scaled_in_model")
                )
            else:
                hint = ""
                if images:
                    hint = (
                        f" (divide the pixel values by 255: "
                        f'`{name} = {name}.astype("float32") / 255`)'
                    )
                elif hi is not None and arr.max > hi and float(hi).is_integer():
                    # Integer codes above the range: word indices from a larger vocabulary.
                    hint = (
                        f" (keep only the {int(hi) + 1:,} most frequent words: load the data "
                        f"with `num_words={int(hi) + 1}`)"
                    )
                problem = (
                    f"`{name}` values range from {arr.min:g} to {arr.max:g}; they should lie in "
                    f"[{lo:g}, {hi:g}]{hint}"
                )
        elif images and hi is not None and arr.max < 0.5 * hi:
            problem = (
                f"`{name}` values only reach {arr.max:g}; scaled once they should reach about "
                f"{hi:g} (were they divided twice?)"
            )
        if problem:
            failed.append("range")
            messages.append(problem + _conceptual(check, "range"))
    if "labels" in p:
        lab_name = p["labels"]
        labels = ev.array(lab_name)
        parts.append("labels")
        if labels is None:
            failed.append("labels")
            messages.append(ev.missing(lab_name, "an array"))
        elif "labels_shape" in p and not _shape_ok(labels.shape, p["labels_shape"]):
            failed.append("labels")
            want_labels = _fmt_shape(tuple(p["labels_shape"]))
            classes = p["labels_shape"][-1]
            messages.append(
                f"`{lab_name}` has shape {_fmt_shape(labels.shape)}; expected {want_labels}"
                + (
                    f" (one-hot encode them with to_categorical: `{lab_name} = "
                    f"keras.utils.to_categorical({lab_name}, {classes})`)"
                    if len(labels.shape) == 1
                    else ""
                )
            )
    if not messages:
        rng = f" in [{arr.min:g}, {arr.max:g}]" if arr.min is not None else ""
        messages.append(f"`{name}` is {_fmt_shape(arr.shape)} {arr.dtype}{rng} as expected")
    return CheckResult.scored(check, _fraction(check, parts, failed), messages)


def _front_layers(model: ModelSummary | None) -> list[str]:
    if model is None:
        return []
    return [layer.type for layer in model.layers[: leading_preparation(model)]]


def _shape_aspect(
    got: tuple[int, ...],
    want: list[int],
    model: ModelSummary | None,
    front: list[str],
    *,
    images: bool,
) -> str:
    """What a shape other than the lab's is: reshaping left to the model (accepted), the
    channel axis elsewhere, sequences of another length, or just another shape."""
    takes_it = model is not None and model.input_shape == tuple(got[1:])
    same_size = len(got) >= 2 and all(w > 0 for w in want[1:])
    same_size = same_size and int(np.prod(got[1:])) == int(np.prod(want[1:]))
    if images and takes_it and same_size and any(t in ("Flatten", "Reshape") for t in front):
        return "reshaped_in_model"
    if images and same_size and len(got) == len(want) == 4 and 1 in got[1:]:
        return "channel_axis"
    far = len(got) == len(want) == 2 and want[1] > 0 and abs(got[1] - want[1]) > want[1] / 2
    if not images and far:
        return "sequence_length"
    return "shape"


def _variant_cost(check: Check, aspect: str) -> str:
    share = float(check.params.get("costs", {}).get(aspect, 0.0))
    if not share:
        return ": accepted"
    lost = share * check.points
    return (
        f": accepted, less {lost:g} point{'s' if lost != 1 else ''} because the arrays are "
        "not prepared as the lab asks"
    )


def _pad_call(name: str, shape: Any) -> str:
    maxlen = shape[1] if isinstance(shape, list) and len(shape) == 2 and shape[1] > 0 else None
    return f"`{name} = pad_sequences({name}" + (f", maxlen={maxlen})`" if maxlen else ")`")


def _shape_hint(name: str, got: tuple[int, ...], want: list[int], *, images: bool) -> str:
    """What to change so that an array of shape ``got`` takes the lab's shape ``want``."""
    got_rest, want_rest = got[1:], want[1:]
    same_size = (
        len(got) >= 2
        and all(w > 0 for w in want_rest)
        and int(np.prod(got_rest)) == int(np.prod(want_rest))
    )
    if images and same_size:
        if len(got) == 3 and len(want) == 2:
            rows = " * ".join(map(str, got_rest))
            return (
                f" (one row of {rows} = {want_rest[0]} pixels per image): flatten the images "
                f"with `{name} = {name}.reshape((len({name}), {rows}))`, the test images likewise"
            )
        dims = ", ".join(map(str, want_rest))
        what = "add the channel axis last" if len(want) == len(got) + 1 else "reshape them"
        return (
            f" ({what}: `{name} = {name}.reshape((len({name}), {dims}))`, the test images likewise)"
        )
    if not images and len(want) == 2 and len(got) <= 2:
        return f" (pad or truncate every sequence to one length with {_pad_call(name, want)})"
    return ""


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


# --- normalisation with training statistics ---------------------------------------------


def check_normalisation(check: Check, ev: Evidence) -> CheckResult:
    """Training features at mean 0 / sd 1, and test features shifted by the *training* stats;
    or raw arrays and a model that standardises them itself with the training statistics
    (a Normalization layer adapted on the training data: accepted, at the rubric's share)."""
    p = check.params
    train, test = p["train_variable"], p["test_variable"]
    tr, te = ev.values.get(train, {}), ev.values.get(test, {})
    if "column_mean" not in tr:
        return CheckResult.failed(check, ev.missing(train, "a 2-D numeric array"))
    if "column_mean" not in te:
        return CheckResult.failed(check, ev.missing(test, "a 2-D numeric array"))
    messages = []
    failed = []
    tr_mean, tr_std = np.asarray(tr["column_mean"]), np.asarray(tr["column_std"])
    te_mean = np.asarray(te["column_mean"])
    train_ok = bool(np.all(np.abs(tr_mean) < 0.05) and np.all(np.abs(tr_std - 1) < 0.05))
    inside = _normalised_inside(ev, tr_mean, te_mean)
    if not train_ok and inside is not None:
        failed.append("normalised_in_model")
        messages.append(inside + _variant_cost(check, "normalised_in_model"))
        return CheckResult.scored(check, _fraction(check, ["train", "test"], failed), messages)
    if not train_ok:
        failed.append("train")
        messages.append(
            f"`{train}` is not standardised: each feature should have mean 0 and standard "
            f"deviation 1: compute `mean = {train}.mean(axis=0)` and `std = {train}.std(axis=0)`, "
            f"then `{train} = ({train} - mean) / std`"
        )
    expected = ev.reference.get("test_column_mean_with_train_stats")
    if expected is None or len(expected) != len(te_mean):
        failed.append("test")
        messages.append(f"`{test}` does not have the lab's {len(expected or [])} features")
    elif not np.allclose(te_mean, expected, atol=0.02):
        failed.append("test")
        own = np.all(np.abs(te_mean) < 0.02)
        fix = f"`{test} = ({test} - mean) / std`, with `mean` and `std` computed on `{train}`"
        messages.append(
            (
                f"`{test}` was normalised with its own mean and sd; use the training set's: "
                f"{fix} (the test data must not influence preprocessing)"
                if own
                else f"`{test}` is not normalised with the training set's mean and sd: use {fix}"
            )
            + _conceptual(check, "test")
        )
    if not messages:
        messages.append("features standardised with the training set's mean and sd")
    return CheckResult.scored(check, _fraction(check, ["train", "test"], failed), messages)


def _normalised_inside(ev: Evidence, tr_mean: np.ndarray, te_mean: np.ndarray) -> str | None:
    """What to tell a student whose model standardises raw arrays itself with the training
    set's statistics; None when it does not (or not with those)."""
    inside = ev.reference.get("model_normalization_mean")
    train_raw = ev.reference.get("train_column_mean")
    test_raw = ev.reference.get("test_column_mean_raw")
    if inside is None or train_raw is None or test_raw is None:
        return None
    inside, train_raw, test_raw = (np.asarray(v) for v in (inside, train_raw, test_raw))
    if not (inside.shape == train_raw.shape == tr_mean.shape == te_mean.shape):
        return None
    scale = np.maximum(1.0, np.abs(train_raw))
    adapted_on_train = bool(np.all(np.abs(inside - train_raw) <= 1e-3 * scale))
    raw_arrays = bool(
        np.all(np.abs(tr_mean - train_raw) <= 1e-3 * scale)
        and np.all(np.abs(te_mean - test_raw) <= 1e-3 * np.maximum(1.0, np.abs(test_raw)))
    )
    if not (adapted_on_train and raw_arrays):
        return None
    return (
        "the arrays stay raw and the model standardises them itself (a Normalization layer "
        "adapted on the training data), which works"
    )


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
