"""The evidence the rubric checks look at: what the model is, and what the arrays hold.

Kept apart from the checks because two sides build it: the evaluator, from the model it
loaded from the capture, and the student's kernel (``self_check``), from live objects. Plain
data (a summary of layers and shapes, never the model itself), so that it travels in the
grading result and tests can make it by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "PREPARATION_LAYERS",
    "ArraySummary",
    "Evidence",
    "LayerInfo",
    "ModelSummary",
    "leading_preparation",
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
    # How the held-out inputs were prepared for the model (grading.metrics.choose_preparation).
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


# Layers that prepare the inputs rather than learn from them: in front of the lab's layers
# they are another way of writing the preparation the lab does on the arrays.
PREPARATION_LAYERS = frozenset({"Flatten", "Reshape", "Rescaling", "Normalization"})


def leading_preparation(model: ModelSummary) -> int:
    """How many of the model's first layers only prepare its inputs."""
    n = 0
    while n < len(model.layers) and model.layers[n].type in PREPARATION_LAYERS:
        n += 1
    return n if n < len(model.layers) else 0
