"""Each lab's rubric is data: one validated TOML file per lab in ``autograder/labs``.

Unknown keys are rejected so that a typo in a rubric fails loudly instead of silently
relaxing a check.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from autograder.errors import ConfigError
from autograder.settings import LABS_DIR, rubric_dir

__all__ = [
    "ASPECTS",
    "CHECK_KINDS",
    "METRICS",
    "VARIABLE_PARAMS",
    "VARIANT_ASPECTS",
    "Check",
    "LayerSpec",
    "ManualPart",
    "Preprocess",
    "Rubric",
    "Threshold",
    "calibration_path",
    "check_notebook_against_rubric",
    "lab_ids",
    "load_calibration",
    "load_rubric",
    "rubric_file",
    "rubric_version",
]

# kind -> keys allowed in that check's table (beyond id/kind/points/title)
CHECK_KINDS: dict[str, frozenset[str]] = {
    "architecture": frozenset(
        {
            "input_shape",
            "layers",
            "match",
            "params",
            "output_units",
            "output_activation",
            "layers_required",
            "costs",
            "conceptual",
        }
    ),
    "compile": frozenset({"optimizers", "losses", "metrics", "costs", "conceptual"}),
    "inputs": frozenset(
        {
            "variable",
            "shape",
            "dtype",
            "min",
            "max",
            "scaled",
            "labels",
            "labels_shape",
            "costs",
            "conceptual",
        }
    ),
    "metric": frozenset({"metric", "thresholds", "preview"}),
    "normalisation": frozenset({"train_variable", "test_variable", "costs", "conceptual"}),
    "callbacks": frozenset({"required", "accepted"}),
    "comparison": frozenset({"histories", "comparison", "history_metric"}),
}
# What a check can find wrong, per kind: a rubric's ``costs`` table gives each the share of
# the check's points it costs (default: an equal share of the aspects checked).
ASPECTS: dict[str, frozenset[str]] = {
    "architecture": frozenset({"input_shape", "layers", "output", "params"}),
    "compile": frozenset({"optimizer", "loss", "metrics"}),
    "inputs": frozenset(
        {
            "shape",
            "dtype",
            "range",
            "labels",
            "channel_axis",
            "sequence_length",
            "reshaped_in_model",
            "scaled_in_model",
        }
    ),
    "normalisation": frozenset({"train", "test", "normalised_in_model"}),
}
# Findings that are accepted ways of solving the lab (preparation done inside the model):
# they cost at most half of the input check, and only where the rubric says so.
VARIANT_ASPECTS = frozenset({"reshaped_in_model", "scaled_in_model", "normalised_in_model"})
# Check parameters that name variables of the student's notebook (captured by the grader).
VARIABLE_PARAMS = (
    "variable",
    "labels",
    "train_variable",
    "test_variable",
    "histories",
    "comparison",
)
METRICS = ("accuracy", "mae")
_LAYER_KEYS = frozenset({"type", "units", "activation", "optional", "max_input_dim"})
_MATCH_MODES = ("exact", "subsequence")


def _strict(table: dict[str, Any], allowed: frozenset[str] | set[str], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _require(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in table:
        raise ConfigError(f"{where}: missing key '{key}'")
    value = table[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where}: '{key}' has the wrong type ({type(value).__name__})")
    return value


@dataclass(frozen=True)
class LayerSpec:
    """One expected layer. ``type`` may list alternatives: ``"SimpleRNN|LSTM|GRU"``."""

    types: tuple[str, ...]
    units: int | None = None
    activation: str | None = None
    optional: bool = False
    max_input_dim: int | None = None

    @classmethod
    def parse(cls, table: dict[str, Any], where: str) -> LayerSpec:
        _strict(table, _LAYER_KEYS, where)
        types = tuple(str(_require(table, "type", str, where)).split("|"))
        units = table.get("units")
        if units is not None and (not isinstance(units, int) or units <= 0):
            raise ConfigError(f"{where}: 'units' must be a positive integer")
        return cls(
            types,
            units,
            table.get("activation"),
            bool(table.get("optional", False)),
            table.get("max_input_dim"),
        )

    def describe(self) -> str:
        parts = ["/".join(self.types)]
        if self.units is not None:
            parts.append(str(self.units))
        if self.activation:
            parts.append(self.activation)
        return " ".join(parts)


@dataclass(frozen=True)
class Threshold:
    """Full points at or beyond ``full``, none at or beyond ``zero``, linear in between."""

    full: float
    zero: float
    calibration: str = ""
    # Memorisation: a held-out score beyond ``review_beyond`` (more than the reference ever
    # reaches on this data), or better than the model's own test split / validation score by
    # more than ``review_gap_*``, marks the submission for review. None: not calibrated.
    review_beyond: float | None = None
    review_gap_test: float | None = None
    review_gap_validation: float | None = None
    # Accepted variants that the lab invites and that learn differently (the book's SimpleRNN
    # where the reference has an LSTM): layer type -> a threshold calibrated on that
    # variant, used for a model that has such a layer. ``example`` names the calibrated one.
    variants: dict[str, Threshold] = field(default_factory=dict, hash=False)
    example: str = ""
    variant: str = ""  # the layer type of a variant's threshold

    @property
    def higher_is_better(self) -> bool:
        return self.full > self.zero

    def better_by(self, value: float, than: float) -> float:
        """How much better ``value`` is than ``than`` (negative when worse)."""
        return value - than if self.higher_is_better else than - value

    def fraction(self, value: float) -> float:
        span = self.full - self.zero
        return min(1.0, max(0.0, (value - self.zero) / span))


@dataclass(frozen=True)
class Check:
    id: str
    kind: str
    points: float
    title: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    layers: tuple[LayerSpec, ...] = ()
    thresholds: dict[str, Threshold] = field(default_factory=dict, hash=False)

    def threshold(self, source: str, layer_types: Iterable[str] = ()) -> Threshold:
        """The threshold for ``source``; a variant's own, where the model has its layer."""
        try:
            base = self.thresholds[source]
        except KeyError:
            raise ConfigError(
                f"check {self.id}: no threshold for data source '{source}' "
                f"(have: {', '.join(sorted(self.thresholds))})"
            ) from None
        types = set(layer_types)
        return next((v for k, v in base.variants.items() if k in types), base)


@dataclass(frozen=True)
class Preprocess:
    """How the grader turns held-out raw data into the model's input."""

    reshape: tuple[int, ...] | None
    scale: float
    dtype: str
    labels: str  # "one_hot" | "sparse" | "binary" | "value"
    normalize: str | None = None  # "train": feature-wise with the training set's mean and std
    pad: int | None = None  # pad_sequences(maxlen=pad), keras' defaults otherwise
    load: dict[str, Any] = field(default_factory=dict, hash=False)  # loader keyword arguments
    limit: int | None = None  # grade on the first `limit` held-out examples only
    # split ("train" | "test") -> the notebook's prepared array of it: the grader learns the
    # student's own preparation from their first rows (autograder.grading.preparation)
    learn_from: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ManualPart:
    """A graded cell the instructor grades by hand (a written answer)."""

    id: str
    title: str
    points: float


@dataclass(frozen=True)
class Rubric:
    lab: str
    title: str
    dataset: str
    notebook: str
    model_variable: str
    preprocess: Preprocess
    checks: tuple[Check, ...]
    manual: tuple[ManualPart, ...] = ()
    # ``lab@<digest of the rubric file>`` (:func:`rubric_version`); empty when not from a file.
    version: str = ""

    @property
    def total_points(self) -> float:
        return sum(c.points for c in self.checks)

    def check(self, check_id: str) -> Check:
        for c in self.checks:
            if c.id == check_id:
                return c
        raise ConfigError(f"lab {self.lab}: no check '{check_id}'")


_TOP_KEYS = frozenset(
    {"lab", "title", "dataset", "notebook", "model", "preprocess", "checks", "manual"}
)
_PRE_KEYS = frozenset(
    {"reshape", "scale", "dtype", "labels", "normalize", "pad", "load", "limit", "learn_from"}
)
_SPLITS = ("train", "test")
_CHECK_BASE = frozenset({"id", "kind", "points", "title"})
_LABEL_MODES = ("one_hot", "sparse", "binary", "value")
_REVIEW_KEYS = ("review_beyond", "review_gap_test", "review_gap_validation")


def _parse_threshold(t: Any, tw: str, variant: bool = False) -> Threshold:
    if not isinstance(t, dict):
        raise ConfigError(f"{tw}: must be a table")
    keys = {"full", "zero", "calibration", *_REVIEW_KEYS}
    _strict(t, frozenset(keys | ({"example"} if variant else {"variants"})), tw)
    review: dict[str, float] = {}
    for key in _REVIEW_KEYS:
        if key in t:
            value = _require(t, key, (int, float), tw)
            if key.startswith("review_gap") and value < 0:
                raise ConfigError(f"{tw}: '{key}' must not be negative")
            review[key] = float(value)
    th = Threshold(
        float(_require(t, "full", (int, float), tw)),
        float(_require(t, "zero", (int, float), tw)),
        str(t.get("calibration", "")),
        review.get("review_beyond"),
        review.get("review_gap_test"),
        review.get("review_gap_validation"),
        example=str(_require(t, "example", str, tw)) if variant else "",
    )
    if th.full == th.zero:
        raise ConfigError(f"{tw}: 'full' and 'zero' must differ")
    if th.review_beyond is not None and th.better_by(th.review_beyond, th.full) < 0:
        raise ConfigError(f"{tw}: 'review_beyond' must lie beyond 'full'")
    return th


def _parse_costs(kind: str, params: dict[str, Any], where: str) -> None:
    """``costs`` (aspect -> share of the check's points) and ``conceptual`` (the aspects
    that are conceptual errors the lab teaches: each costs at least half of the check;
    accepted variants at most half)."""
    costs = params.get("costs", {})
    if not isinstance(costs, dict):
        raise ConfigError(f"{where}: 'costs' must be a table")
    _strict(costs, ASPECTS.get(kind, frozenset()), f"{where}.costs")
    for aspect, share in costs.items():
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise ConfigError(f"{where}.costs: '{aspect}' must be a share in (0, 1]")
        if aspect in VARIANT_ASPECTS and share > 0.5:
            raise ConfigError(
                f"{where}.costs: '{aspect}' is an accepted variant: it may cost at most 0.5"
            )
    conceptual = params.get("conceptual", [])
    if not isinstance(conceptual, list) or not all(isinstance(a, str) for a in conceptual):
        raise ConfigError(f"{where}: 'conceptual' must be a list of aspects")
    for aspect in conceptual:
        if aspect not in costs:
            raise ConfigError(f"{where}: conceptual error '{aspect}' needs its share in 'costs'")
        if aspect in VARIANT_ASPECTS:
            raise ConfigError(f"{where}: '{aspect}' is an accepted variant, not an error")
        if costs[aspect] < 0.5:
            raise ConfigError(
                f"{where}.costs: '{aspect}' is a conceptual error: it must cost at least 0.5"
            )


def _parse_check(table: dict[str, Any], where: str) -> Check:
    kind = _require(table, "kind", str, where)
    if kind not in CHECK_KINDS:
        raise ConfigError(f"{where}: unknown check kind '{kind}' (known: {', '.join(CHECK_KINDS)})")
    _strict(table, _CHECK_BASE | CHECK_KINDS[kind], where)
    check_id = _require(table, "id", str, where)
    points = _require(table, "points", (int, float), where)
    if points <= 0:
        raise ConfigError(f"{where}: 'points' must be positive")
    params = {k: v for k, v in table.items() if k not in _CHECK_BASE | {"layers", "thresholds"}}
    layers: tuple[LayerSpec, ...] = ()
    if kind == "architecture":
        raw_layers = _require(table, "layers", list, where)
        layers = tuple(LayerSpec.parse(t, f"{where}.layers[{i}]") for i, t in enumerate(raw_layers))
        if params.setdefault("match", "exact") not in _MATCH_MODES:
            raise ConfigError(f"{where}: 'match' must be one of {', '.join(_MATCH_MODES)}")
    _parse_costs(kind, params, where)
    thresholds: dict[str, Threshold] = {}
    if kind == "metric" and params.get("metric") not in METRICS:
        raise ConfigError(f"{where}: 'metric' must be one of {', '.join(METRICS)}")
    if kind == "metric":
        raw = _require(table, "thresholds", dict, where)
        for source, t in raw.items():
            tw = f"{where}.thresholds.{source}"
            variants = {}
            for layer, v in dict(t.get("variants", {})).items():
                variants[layer] = replace(
                    _parse_threshold(v, f"{tw}.variants.{layer}", variant=True), variant=layer
                )
            th = replace(_parse_threshold(t, tw), variants=variants)
            if any(v.higher_is_better != th.higher_is_better for v in variants.values()):
                raise ConfigError(f"{tw}: a variant's threshold runs the other way")
            thresholds[source] = th
        if not thresholds:
            raise ConfigError(f"{where}: at least one data source threshold is needed")
    return Check(
        id=check_id,
        kind=kind,
        points=float(points),
        title=str(table.get("title", check_id)),
        params=params,
        layers=layers,
        thresholds=thresholds,
    )


def parse_rubric(data: dict[str, Any], where: str = "rubric") -> Rubric:
    """Validate a rubric table; raise :class:`ConfigError` naming the bad key."""
    _strict(data, _TOP_KEYS, where)
    pre = _require(data, "preprocess", dict, where)
    _strict(pre, _PRE_KEYS, f"{where}.preprocess")
    labels = pre.get("labels", "sparse")
    if labels not in _LABEL_MODES:
        raise ConfigError(f"{where}.preprocess: 'labels' must be one of {', '.join(_LABEL_MODES)}")
    reshape = pre.get("reshape")
    if pre.get("normalize") not in (None, "train"):
        raise ConfigError(f"{where}.preprocess: 'normalize' must be \"train\"")
    learn_from = pre.get("learn_from", {})
    if not isinstance(learn_from, dict) or not all(
        isinstance(v, str) and v for v in learn_from.values()
    ):
        raise ConfigError(f"{where}.preprocess: 'learn_from' maps a split to a variable name")
    _strict(learn_from, frozenset(_SPLITS), f"{where}.preprocess.learn_from")
    model = _require(data, "model", dict, where)
    _strict(model, frozenset({"variable"}), f"{where}.model")
    raw_checks = _require(data, "checks", list, where)
    checks = tuple(_parse_check(t, f"{where}.checks[{i}]") for i, t in enumerate(raw_checks))
    manual = []
    raw_manual = data.get("manual", {})
    if not isinstance(raw_manual, dict):
        raise ConfigError(f"{where}: 'manual' must be a table of graded-by-hand cells")
    for gid, t in raw_manual.items():
        mw = f"{where}.manual.{gid}"
        if not isinstance(t, dict):
            raise ConfigError(f"{mw}: must be a table with 'title' and 'points'")
        _strict(t, frozenset({"title", "points"}), mw)
        points = _require(t, "points", (int, float), mw)
        if points <= 0:
            raise ConfigError(f"{mw}: 'points' must be positive")
        manual.append(ManualPart(gid, str(_require(t, "title", str, mw)), float(points)))
    ids = [c.id for c in checks] + [m.id for m in manual]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}: check ids must be unique")
    return Rubric(
        lab=_require(data, "lab", str, where),
        title=_require(data, "title", str, where),
        dataset=_require(data, "dataset", str, where),
        notebook=_require(data, "notebook", str, where),
        model_variable=_require(model, "variable", str, f"{where}.model"),
        preprocess=Preprocess(
            reshape=tuple(reshape) if reshape is not None else None,
            scale=float(pre.get("scale", 1.0)),
            dtype=str(pre.get("dtype", "float32")),
            labels=labels,
            normalize=pre.get("normalize"),
            pad=pre.get("pad"),
            load=dict(pre.get("load", {})),
            limit=pre.get("limit"),
            learn_from=dict(learn_from),
        ),
        checks=checks,
        manual=tuple(manual),
    )


def lab_ids() -> list[str]:
    """The labs that have a rubric, in course order."""
    return sorted(p.stem for p in rubric_dir().glob("*.toml") if "." not in p.stem)


def rubric_file(lab: str) -> Path:
    """Where ``lab``'s rubric lives (``autograder/labs/<lab>.toml``, or the folder
    ``AUTOGRADER_RUBRIC_DIR`` names)."""
    return rubric_dir() / f"{lab}.toml"


def calibration_path(lab: str) -> Path:
    """Where ``autograder calibrate`` records ``lab``'s reference runs, by data source."""
    return LABS_DIR / f"{lab}.calibration.json"


def load_calibration(lab: str) -> dict[str, Any]:
    """``lab``'s calibration figures (:mod:`autograder.authoring.calibrate`); {} if none."""
    path = calibration_path(lab)
    return json.loads(path.read_text()) if path.is_file() else {}


def rubric_version(lab: str) -> str:
    """Which rubric scored a result: ``lab@<digest of its rubric file>``. A change of
    threshold or points is a new version; the execution stays."""
    return load_rubric(lab).version


def load_rubric(lab: str) -> Rubric:
    """``lab``'s rubric, validated; read again when its file changes (a long-running
    service sees a new threshold)."""
    path = rubric_file(lab)
    if not path.is_file():
        raise ConfigError(f"no rubric for lab '{lab}' (known: {', '.join(lab_ids())})")
    st = path.stat()
    return _load_rubric(lab, str(path), st.st_mtime_ns, st.st_size)


@cache
def _load_rubric(lab: str, path: str, _mtime_ns: int, _size: int) -> Rubric:
    raw = Path(path).read_bytes()
    rubric = parse_rubric(tomllib.loads(raw.decode()), where=f"labs/{lab}.toml")
    if rubric.lab != lab:
        raise ConfigError(f"labs/{lab}.toml declares lab '{rubric.lab}'")
    return replace(rubric, version=f"{lab}@{hashlib.sha256(raw).hexdigest()[:12]}")


def check_notebook_against_rubric(notebook: Path, rubric: Rubric) -> None:
    """Every autograded test cell is a rubric check with the same points, every cell graded
    by hand a ``manual`` entry of the rubric, and vice versa."""
    import nbformat  # here: the test cells import this module in every kernel

    nb = nbformat.read(notebook, as_version=4)
    cells: dict[str, float] = {}
    by_hand: dict[str, float] = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade") and not meta.get("solution") and cell.cell_type == "code":
            cells[meta["grade_id"]] = float(meta.get("points", 0))
        elif meta.get("grade"):
            by_hand[meta["grade_id"]] = float(meta.get("points", 0))
    checks = {c.id: c.points for c in rubric.checks}
    problems = []
    manual = {m.id: m.points for m in rubric.manual}
    if by_hand != manual:
        problems.append(
            f"cells graded by hand {by_hand or 'none'}, the rubric's manual {manual or 'none'}"
        )
    for gid in sorted(set(cells) - set(checks)):
        problems.append(f"test cell {gid} has no check in the rubric")
    for gid in sorted(set(checks) - set(cells)):
        problems.append(f"rubric check {gid} has no test cell in the notebook")
    for gid in sorted(set(cells) & set(checks)):
        if cells[gid] != checks[gid]:
            problems.append(
                f"{gid}: the cell gives {cells[gid]:g} points, the rubric {checks[gid]:g}"
            )
    if problems:
        raise ConfigError(
            f"{notebook.name} disagrees with labs/{rubric.lab}.toml: " + "; ".join(problems)
        )
