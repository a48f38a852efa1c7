"""Grade captured artifacts in a clean process: load the model safely, score it on held-out data.

The grading pipeline runs :func:`evaluate_artifacts` in a child of an evaluator server
(:mod:`autograder.grading.evaluation_server`), under another account and limits, so that neither the
student's kernel nor a crafted model file can touch the process that records grades.
``python -m autograder.grading.evaluate LAB ARTIFACTS --out RESULT.json`` runs it directly, for
a look at one capture by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import stat
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from autograder.fstree import write_fresh
from autograder.grading.capture import CAPTURE_FILE, MODEL_FILE, SAMPLES_FILE, read_capture
from autograder.grading.checks import Evidence, run_checks, summarize_model
from autograder.grading.preparation import learn_preparation, shape_text
from autograder.grading.review import memorisation, training_record
from autograder.results import CheckResult, GradingResult
from autograder.rubric import Rubric, load_rubric

__all__ = [
    "artifacts_problem",
    "confusion_matrix",
    "evaluate_artifacts",
    "evidence_from_capture",
    "failed_result",
    "files_problem",
    "heldout_metrics",
    "load_model_safely",
    "metric_value",
    "optimizer_iterations",
    "predict",
    "prepare_inputs",
    "preview_metrics",
    "standard_preparation",
    "unsafe_layers",
    "witness_metrics",
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


def _student_view(rubric: Rubric) -> Any:
    from autograder.data import loaders as datasets

    loader = getattr(datasets, f"load_{rubric.dataset}")
    return loader(**rubric.preprocess.load)


def _train_stats(rubric: Rubric) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature-wise mean and sd of the students' training set, and their test inputs."""
    (train_x, _), (test_x, _) = _student_view(rubric)
    return train_x.mean(axis=0), train_x.std(axis=0), test_x


def prepare_inputs(x: Any, rubric: Rubric) -> np.ndarray:
    """The held-out inputs as the lab's notebook prepares its own: pad, reshape, normalise."""
    pre = rubric.preprocess
    if pre.pad is not None:
        from keras.utils import pad_sequences

        x = pad_sequences(list(x), maxlen=pre.pad)
    x = np.asarray(x)
    if pre.reshape is not None:
        x = x.reshape(pre.reshape)
    x = x.astype(pre.dtype)
    if pre.normalize == "train":
        mean, std, _ = _train_stats(rubric)
        x = (x - mean) / std
    if pre.scale != 1.0:
        x = x / np.asarray(pre.scale, dtype=pre.dtype)
    return x


Prepare = Callable[[Any], np.ndarray]


def _standard(rubric: Rubric) -> Prepare:
    """The lab's own preparation (:func:`prepare_inputs`) as a :data:`Prepare`."""
    return lambda x: prepare_inputs(x, rubric)


def standard_preparation(rubric: Rubric) -> str:
    """The lab's own preparation of its inputs, as the report names it."""
    pre = rubric.preprocess
    if pre.pad is not None:
        return f"(n, {pre.pad}) {pre.dtype}, padded to {pre.pad} words"
    shape = shape_text(pre.reshape) if pre.reshape is not None else "as loaded"
    what = f"{shape} {pre.dtype}"
    if pre.normalize == "train":
        what += ", standardised with the training set's mean and sd"
    if pre.scale != 1.0:
        what += f", values / {pre.scale:g}"
    return what


def _read_samples(artifacts: Path) -> dict[str, np.ndarray]:
    path = artifacts / SAMPLES_FILE
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: np.asarray(npz[k]) for k in npz.files if k in ("fit", "train", "test")}
    except Exception:
        return {}


def _preparation(rubric: Rubric, samples: dict[str, np.ndarray]) -> tuple[Prepare, str, bool]:
    """How the held-out inputs reach this model, what the report says about it, and whether
    it was learned: the student's own preparation where their arrays show it, else the
    lab's."""
    standard = f"prepared as the lab asks: {standard_preparation(rubric)}"
    learn = rubric.preprocess.learn_from
    candidates = []
    if samples:
        (train_x, _), (test_x, _) = _student_view(rubric)
        raw = {"train": train_x, "test": test_x}
        if "fit" in samples:
            candidates.append(("the inputs fit() received", train_x, samples["fit"]))
        for split, var in learn.items():
            if split in samples:
                candidates.append((f"`{var}`", raw[split], samples[split]))
    found, why = learn_preparation(candidates)
    if found is not None:
        return (
            found.apply,
            f"held-out inputs prepared as the model was trained ({found.describe()}, "
            f"learned from {found.source})",
            True,
        )
    if why:
        return (
            _standard(rubric),
            f"held-out inputs {standard}; the notebook's own preparation could not be "
            f"reproduced ({why[-1]})",
            False,
        )
    return _standard(rubric), f"held-out inputs {standard}", False


def _mismatch(model: Any, x: np.ndarray, exc: BaseException, how: str) -> str:
    """Why the model could not take the prepared inputs, in the student's terms: what it
    takes, and what it was given."""
    try:
        want = tuple(model.inputs[0].shape)
    except Exception:
        return _short(exc)
    got = (None, *x.shape[1:])
    differs = len(want) != len(got) or any(
        w is not None and w != g for w, g in zip(want, got, strict=True)
    )
    if differs:
        return (
            f"the model takes inputs of shape {shape_text(want)}; the held-out data prepared "
            f"{how} has shape {shape_text(got)}: train the model on arrays of the shape it takes"
        )
    return (
        f"the model takes inputs of shape {shape_text(want)} and could not be run on the "
        f"held-out data prepared {how} ({shape_text(got)} {x.dtype}): {_short(exc)}"
    )


def metric_value(metric: str, pred: np.ndarray, y: np.ndarray) -> float:
    """``accuracy`` (integer, one-hot or binary labels) or ``mae`` of predictions ``pred``."""
    pred = np.asarray(pred)
    y = np.asarray(y)
    if not np.isfinite(pred).all():
        raise ValueError("the model predicts NaN or infinite values (did training diverge?)")
    if metric == "mae":
        if pred.ndim != 2 or pred.shape[1] != 1:
            raise ValueError(f"predictions have shape {pred.shape}; a regression needs (n, 1)")
        return float(np.abs(pred[:, 0] - y.reshape(-1)).mean())
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if pred.ndim != 2 or pred.shape[0] != y.shape[0]:
        raise ValueError(
            f"the model's predictions have shape {pred.shape}; expected ({y.shape[0]}, classes)"
        )
    labels = (pred[:, 0] > 0.5).astype(y.dtype) if pred.shape[1] == 1 else pred.argmax(axis=1)
    return float((labels == y).mean())


def _metric_checks(rubric: Rubric) -> list[str]:
    return [c.params["metric"] for c in rubric.checks if c.kind == "metric"]


def confusion_matrix(pred: np.ndarray, y: np.ndarray) -> list[list[int]]:
    """Counts of (true class, predicted class): rows true, columns predicted.

    Classes are read as :func:`metric_value` reads them, so the diagonal over the total is
    the accuracy it computes from the same arrays.
    """
    pred = np.asarray(pred)
    y = np.asarray(y)
    width = y.shape[1] if y.ndim == 2 and y.shape[1] > 1 else 2 if pred.shape[1] == 1 else 0
    true = y.argmax(axis=1) if y.ndim == 2 and y.shape[1] > 1 else y.reshape(-1)
    true = true.astype(np.int64)
    labels = (pred[:, 0] > 0.5) if pred.shape[1] == 1 else pred.argmax(axis=1)
    labels = labels.astype(np.int64)
    n = max(width, pred.shape[1], int(true.max()) + 1, int(labels.max()) + 1)
    counts = np.bincount(true * n + labels, minlength=n * n).reshape(n, n)
    return counts.tolist()


# Class names shown on the confusion matrix where the class index means something else.
_CLASS_NAMES = {"imdb": ("negative", "positive")}


def _classifier_figures(rubric: Rubric, pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    matrix = confusion_matrix(pred, y)
    names = _CLASS_NAMES.get(rubric.dataset, ())
    labels = list(names) if len(names) == len(matrix) else [str(i) for i in range(len(matrix))]
    return {"confusion_matrix": {"labels": labels, "matrix": matrix, "data": "held-out"}}


def _regression_figures(rubric: Rubric, model: Any, prepare: Prepare) -> dict[str, Any]:
    # The students' own test split, prepared as the held-out houses are: showing predictions
    # on held-out houses would reveal their prices.
    _, (test_x, test_y) = _student_view(rubric)
    pred = predict(model, prepare(test_x))
    pred = np.asarray(pred).reshape(len(test_y), -1)[:, 0]
    if not np.isfinite(pred).all():
        return {}
    pairs = [[round(float(t), 4), round(float(p), 4)] for t, p in zip(test_y, pred, strict=True)]
    return {"predicted_vs_true": {"pairs": pairs, "data": "public test split"}}


def predict(model: Any, x: np.ndarray, batch_size: int = 1024) -> Any:
    """``model.predict``'s numbers. A model without recurrent layers is called on batches
    directly: for the labs' small models, predict's tracing and input pipeline cost more
    than the arithmetic (0.25 s against 0.1 s on 5,000 images)."""
    import keras

    recurrent = (keras.layers.RNN, keras.layers.Bidirectional)
    if len(x) == 0 or any(isinstance(layer, recurrent) for layer in _layers(model)):
        return model.predict(x, batch_size=512, verbose=0)
    parts = []
    for start in range(0, len(x), batch_size):
        out = model(x[start : start + batch_size], training=False)
        if not keras.ops.is_tensor(out):  # several outputs: as predict returns them
            return model.predict(x, batch_size=512, verbose=0)
        parts.append(keras.ops.convert_to_numpy(out))
    return np.concatenate(parts)


def _layers(model: Any) -> list[Any]:
    """Every layer, those of nested models included."""
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        found.extend(_layers(layer))
    return found


def _heldout(
    rubric: Rubric, model: Any, prepare: Prepare | None = None, how: str = "as the lab asks"
) -> tuple[dict[str, float], dict[str, str], dict[str, Any], bool]:
    """Metrics and problems as :func:`heldout_metrics`, the numbers for the feedback, and
    whether the model ran on the inputs at all."""
    from autograder.data.loaders import load_heldout

    prepare = prepare or _standard(rubric)

    metrics: dict[str, float] = {}
    problems: dict[str, str] = {}
    figures: dict[str, Any] = {}
    wanted = _metric_checks(rubric)
    if not wanted:
        return metrics, problems, figures, True
    try:
        x, y = load_heldout(rubric.dataset, **rubric.preprocess.load)
        if rubric.preprocess.limit is not None:
            x, y = x[: rubric.preprocess.limit], y[: rubric.preprocess.limit]
        x = prepare(x)
    except Exception as exc:
        for metric in wanted:
            problems[metric] = f"the held-out data could not be prepared: {_short(exc)}"
        return metrics, problems, figures, False
    try:
        pred = predict(model, x)
    except Exception as exc:
        for metric in wanted:
            problems[metric] = (
                f"the model could not be evaluated on held-out data: "
                f"{_mismatch(model, x, exc, how)}"
            )
        return metrics, problems, figures, False
    try:
        for metric in wanted:
            metrics[metric] = metric_value(metric, pred, y)
    except Exception as exc:
        for metric in wanted:
            problems[metric] = f"the model could not be evaluated on held-out data: {_short(exc)}"
        return {}, problems, figures, True
    try:
        if "accuracy" in metrics:
            figures.update(_classifier_figures(rubric, pred, y))
        if "mae" in metrics:
            figures.update(_regression_figures(rubric, model, prepare))
    except Exception:  # pictures are a courtesy: they must never cost a grade
        pass
    return metrics, problems, figures, True


# Enough examples of the test split to see a memorising model's gap, few enough that the
# IMDB LSTM's second evaluation costs seconds.
_WITNESS_MAX = 1000

# Names keras gives a validation accuracy, by how the student asked for it in compile().
_VAL_NAMES = {
    "accuracy": (
        "val_accuracy",
        "val_acc",
        "val_binary_accuracy",
        "val_categorical_accuracy",
        "val_sparse_categorical_accuracy",
    ),
    "mae": ("val_mae", "val_mean_absolute_error"),
}


def witness_metrics(
    rubric: Rubric, model: Any, history: dict[str, Any], prepare: Prepare | None = None
) -> dict[str, dict[str, float]]:
    """Per metric, the model's score on its own test split (computed here, prepared as the
    held-out data is) and its last validation score (as fit() recorded it), where there are
    such: what a held-out score is compared with to see memorisation."""
    found: dict[str, dict[str, float]] = {}
    wanted = _metric_checks(rubric)
    if not wanted:
        return found
    test: tuple[Any, Any] | None = None
    try:
        _, (x, y) = _student_view(rubric)
        x, y = x[:_WITNESS_MAX], y[:_WITNESS_MAX]
        test = predict(model, (prepare or _standard(rubric))(x)), y
    except Exception:  # the held-out evaluation reports what is wrong with the model
        pass
    for metric in wanted:
        values: dict[str, float] = {}
        if test is not None:
            with contextlib.suppress(Exception):
                values["test"] = metric_value(metric, *test)
        for name in _VAL_NAMES.get(metric, (f"val_{metric}",)):
            series = history.get(name)
            if isinstance(series, list) and series and isinstance(series[-1], int | float):
                values["validation"] = float(series[-1])
                break
        found[metric] = values
    return found


def optimizer_iterations(path: Path) -> int | None:
    """The step count of the optimizer saved in a ``.keras`` archive (keras keeps it as the
    optimizer's first variable); None when there is none or it cannot be read."""
    import io

    import h5py

    try:
        with zipfile.ZipFile(path) as zf, h5py.File(io.BytesIO(zf.read("model.weights.h5"))) as f:
            var = f.get("optimizer/vars/0")
            if isinstance(var, h5py.Dataset) and var.shape == () and var.dtype.kind in "iu":
                return int(var[()])
    except Exception:
        return None
    return None


def heldout_metrics(rubric: Rubric, model: Any) -> tuple[dict[str, float], dict[str, str]]:
    """The rubric's metrics on the held-out split, which the student's notebook never loads."""
    metrics, problems, _, _ = _heldout(rubric, model)
    return metrics, problems


def preview_metrics(
    rubric: Rubric, model: Any, namespace: Any
) -> tuple[dict[str, float], dict[str, str]]:
    """In the student's kernel: the metric on the notebook's own test split, as a preview."""
    metrics: dict[str, float] = {}
    problems: dict[str, str] = {}
    for check in rubric.checks:
        if check.kind != "metric":
            continue
        x_name, y_name = check.params.get("preview", (None, None))
        metric = check.params["metric"]
        if x_name not in namespace or y_name not in namespace:
            problems[metric] = f"define `{x_name}` and `{y_name}` to preview the {metric}"
            continue
        try:
            pred = model.predict(namespace[x_name], batch_size=512, verbose=0)
            metrics[metric] = metric_value(metric, pred, namespace[y_name])
        except Exception as exc:
            problems[metric] = f"the model could not be evaluated on your test data: {_short(exc)}"
    return metrics, problems


def reference_figures(rubric: Rubric) -> dict[str, Any]:
    """Figures the checks compare the student's arrays with, from the grader's copy of the data."""
    if not _normalises(rubric):
        return {}
    mean, std, test_x = _train_stats(rubric)
    return {
        "test_column_mean_with_train_stats": ((test_x - mean) / std).mean(axis=0).tolist(),
        "train_column_mean": mean.tolist(),
        "test_column_mean_raw": test_x.mean(axis=0).tolist(),
    }


def _normalises(rubric: Rubric) -> bool:
    return any(c.kind == "normalisation" for c in rubric.checks)


def _model_normalisation(model: Any) -> dict[str, Any]:
    """The mean a leading Normalization layer subtracts (what it was adapted on), if the
    model standardises its own inputs."""
    import keras

    for layer in _layers(model):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.layers.Normalization) and layer.mean is not None:
            mean = np.asarray(keras.ops.convert_to_numpy(layer.mean), dtype=np.float64)
            return {"model_normalization_mean": mean.reshape(-1).tolist()}
        return {}
    return {}


def load_model_safely(rubric: Rubric, artifacts: Path, problems: dict[str, str]) -> Any:
    """The saved model, loaded with keras' safe mode after refusing code-carrying layers.

    Returns ``None`` (with the reason in ``problems["model"]``) when it cannot be had.
    """
    mv = rubric.model_variable
    path = artifacts / MODEL_FILE
    if mv in problems:
        problems["model"] = problems[mv]
        return None
    if not path.is_file():
        problems["model"] = f"`{mv}` was not saved by the notebook"
        return None
    try:
        bad = unsafe_layers(_read_model_config(path))
        if bad:
            problems["model"] = (
                f"`{mv}` contains {', '.join(bad)}: code-carrying layers are not accepted; "
                "use built-in Keras layers only"
            )
            return None
        import keras

        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        problems["model"] = f"`{mv}` could not be loaded safely: {_short(exc)}"
        return None


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
        config = _read_model_config(artifacts / MODEL_FILE)
        summary = replace(summary, compile_config=config.get("compile_config") or {})
        if heldout:
            prepare, preparation, learned = _preparation(rubric, _read_samples(artifacts))
            how = "as the notebook's arrays" if learned else "as the lab asks"
            found, failed, figures, ran = _heldout(rubric, model, prepare, how)
            if not ran and learned:
                # The arrays' form does not fit the model (they changed after training, say):
                # the lab's own preparation may.
                standard = _standard(rubric)
                again = _heldout(rubric, model, standard)
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
    for metric in _metric_checks(rubric):
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
            **(_model_normalisation(model) if model is not None and _normalises(rubric) else {}),
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
) -> tuple[str, ...]:
    reasons = []
    for check in rubric.checks:
        metric = check.params.get("metric")
        if check.kind != "metric" or metric not in ev.metrics:
            continue
        threshold = check.thresholds.get(ev.data_source)
        if threshold is not None and ev.model is not None:
            threshold = check.threshold(ev.data_source, [la.type for la in ev.model.layers])
        if threshold is not None:
            value = ev.metrics[metric]
            reasons += memorisation(threshold, metric, value, witnesses.get(metric, {}))
    reasons += training_record(
        rubric.model_variable,
        ev.fit_calls,
        _as_dict(capture.get("history")),
        iterations if ev.model is not None else None,
    )
    return tuple(reasons)


def failed_result(rubric: Rubric, source: str, reason: str) -> GradingResult:
    """Every check at zero, with the same reason: the submission could not be graded."""
    checks = tuple(CheckResult.failed(c, reason, status="error") for c in rubric.checks)
    return GradingResult(rubric.lab, source, checks, error=reason)


# What the kernel may leave for the evaluator: far more than any lab's model needs (the
# largest, the CNN's, is a few MiB), far less than what would hurt the grader to read.
MAX_BYTES = {CAPTURE_FILE: 4 * 2**20, MODEL_FILE: 256 * 2**20, SAMPLES_FILE: 8 * 2**20}
_MAX_UNPACKED = 512 * 2**20  # the model archive's members, as declared (zipfile holds to it)
_MAX_MEMBERS = 1000
_MAX_RATIO = 100  # for members over 1 MiB: a higher one is a compression bomb


def artifacts_problem(artifacts: Path) -> str | None:
    """Why the files the kernel wrote must not be read, checked before any is: each one a
    regular file within its size, the model archive within its count, unpacked size and
    compression ratio of members. None when they may be read."""
    return files_problem(artifacts) or _archive_problem(artifacts)


def files_problem(artifacts: Path) -> str | None:
    """The part of :func:`artifacts_problem` that reads no file, only their metadata."""
    for name, cap in MAX_BYTES.items():
        try:
            st = (artifacts / name).lstat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"{name} cannot be read ({type(exc).__name__})"
        if not stat.S_ISREG(st.st_mode):
            return f"{name} is not a regular file"
        if st.st_size > cap:
            return f"{name} is {st.st_size / 2**20:.0f} MiB, over the {cap / 2**20:.0f} MiB allowed"
    return None


def _archive_problem(artifacts: Path) -> str | None:
    for name in (MODEL_FILE, SAMPLES_FILE):
        problem = _zip_problem(artifacts / name)
        if problem is not None:
            return problem
    return None


def _zip_problem(path: Path) -> str | None:
    name = path.name
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
    except (OSError, zipfile.BadZipFile):
        return None  # no archive, or a broken one: loading says so
    if len(members) > _MAX_MEMBERS:
        return f"{name} holds {len(members)} files, over the {_MAX_MEMBERS} allowed"
    unpacked = sum(m.file_size for m in members)
    if unpacked > _MAX_UNPACKED:
        return (
            f"{name} unpacks to {unpacked / 2**20:.0f} MiB, "
            f"over the {_MAX_UNPACKED / 2**20:.0f} MiB allowed"
        )
    for m in members:
        if m.file_size > 2**20 and m.file_size > _MAX_RATIO * max(1, m.compress_size):
            return f"{name} member {m.filename[:100]!r} is compressed over {_MAX_RATIO}:1"
    return None


def evaluate_artifacts(lab: str, artifacts: Path) -> GradingResult:
    """Grade one submission from what the capture cell left in ``artifacts``."""
    from autograder.data.loaders import data_source

    rubric = load_rubric(lab)
    problem = artifacts_problem(artifacts)
    if problem is not None:
        return failed_result(
            rubric,
            data_source(rubric.dataset),
            f"the files the notebook left for grading were not read: {problem}",
        )
    capture = read_capture(artifacts)
    if capture is None:
        from autograder.sandbox.kernel import read_limit

        # A kernel stopped by a limit left its reason: that is what the student must read.
        limit = read_limit(artifacts)
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
        review=_review(rubric, ev, capture, witnesses, iterations),
        preparation=ev.preparation,
    )


# Keras wraps a layer's error in lines that name the call and its arguments, and TensorFlow
# adds node names: neither tells the student anything.
_NOISE = re.compile(r"^(Exception encountered when calling|Arguments received by|•)")
_NODE = re.compile(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]|\x1b\[[0-9;]*m")


def _short(exc: BaseException) -> str:
    lines = [_NODE.sub("", ln).strip() for ln in str(exc).strip().splitlines()]
    kept = [ln for ln in lines if ln and not _NOISE.match(ln)]
    text = kept[-1] if kept else (lines[-1] if lines else "")
    return f"{type(exc).__name__}: {text}"[:300]


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
