"""The loaded model on data: the rubric's metrics and the figures that go with them.

Held-out metrics (the grade: data the student's notebook never loads), prepared the way the
model was trained where the capture shows it (:func:`choose_preparation`), else as the lab
asks; witness metrics on the student's own test split and validation history (to see
memorisation); the preview metrics ``self_check`` shows in the student's kernel; and the
reference figures the normalisation check compares the student's arrays with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from autograder.grading.artifacts import short_error
from autograder.grading.preparation import learn_preparation, shape_text
from autograder.rubric import Rubric

__all__ = [
    "Prepare",
    "choose_preparation",
    "confusion_matrix",
    "heldout_evaluation",
    "heldout_metrics",
    "metric_value",
    "model_normalisation",
    "normalises",
    "predict",
    "prepare_inputs",
    "preview_metrics",
    "reference_figures",
    "rubric_metrics",
    "standard_preparation",
    "standard_prepare",
    "student_view",
    "train_stats",
    "witness_metrics",
]


def student_view(rubric: Rubric) -> Any:
    """The lab's public splits as the students' notebooks load them (the grader's copy)."""
    from autograder.data import loaders as datasets

    loader = getattr(datasets, f"load_{rubric.dataset}")
    return loader(**rubric.preprocess.load)


def train_stats(rubric: Rubric) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature-wise mean and sd of the students' training set, and their test inputs."""
    (train_x, _), (test_x, _) = student_view(rubric)
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
        mean, std, _ = train_stats(rubric)
        x = (x - mean) / std
    if pre.scale != 1.0:
        x = x / np.asarray(pre.scale, dtype=pre.dtype)
    return x


Prepare = Callable[[Any], np.ndarray]


def standard_prepare(rubric: Rubric) -> Prepare:
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


def choose_preparation(rubric: Rubric, samples: dict[str, np.ndarray]) -> tuple[Prepare, str, bool]:
    """How the held-out inputs reach this model, what the report says about it, and whether
    it was learned: the student's own preparation where their arrays show it, else the
    lab's."""
    standard = f"prepared as the lab asks: {standard_preparation(rubric)}"
    learn = rubric.preprocess.learn_from
    candidates = []
    if samples:
        (train_x, _), (test_x, _) = student_view(rubric)
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
            standard_prepare(rubric),
            f"held-out inputs {standard}; the notebook's own preparation could not be "
            f"reproduced ({why[-1]})",
            False,
        )
    return standard_prepare(rubric), f"held-out inputs {standard}", False


def _mismatch(model: Any, x: np.ndarray, exc: BaseException, how: str) -> str:
    """Why the model could not take the prepared inputs, in the student's terms: what it
    takes, and what it was given."""
    try:
        want = tuple(model.inputs[0].shape)
    except Exception:
        return short_error(exc)
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
        f"held-out data prepared {how} ({shape_text(got)} {x.dtype}): {short_error(exc)}"
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


def rubric_metrics(rubric: Rubric) -> list[str]:
    """The metric each of the rubric's metric checks scores."""
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
    _, (test_x, test_y) = student_view(rubric)
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


def heldout_evaluation(
    rubric: Rubric, model: Any, prepare: Prepare | None = None, how: str = "as the lab asks"
) -> tuple[dict[str, float], dict[str, str], dict[str, Any], bool]:
    """Metrics and problems as :func:`heldout_metrics`, the numbers for the feedback, and
    whether the model ran on the inputs at all."""
    from autograder.data.loaders import load_heldout

    prepare = prepare or standard_prepare(rubric)

    metrics: dict[str, float] = {}
    problems: dict[str, str] = {}
    figures: dict[str, Any] = {}
    wanted = rubric_metrics(rubric)
    if not wanted:
        return metrics, problems, figures, True
    try:
        x, y = load_heldout(rubric.dataset, **rubric.preprocess.load)
        if rubric.preprocess.limit is not None:
            x, y = x[: rubric.preprocess.limit], y[: rubric.preprocess.limit]
        x = prepare(x)
    except Exception as exc:
        for metric in wanted:
            problems[metric] = f"the held-out data could not be prepared: {short_error(exc)}"
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
            problems[metric] = (
                f"the model could not be evaluated on held-out data: {short_error(exc)}"
            )
        return {}, problems, figures, True
    figures["heldout_examples"] = len(y)  # what the review's sampling noise depends on
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
    wanted = rubric_metrics(rubric)
    if not wanted:
        return found
    test: tuple[Any, Any] | None = None
    try:
        _, (x, y) = student_view(rubric)
        x, y = x[:_WITNESS_MAX], y[:_WITNESS_MAX]
        test = predict(model, (prepare or standard_prepare(rubric))(x)), y
    except Exception:  # the held-out evaluation reports what is wrong with the model
        pass
    for metric in wanted:
        values: dict[str, float] = {}
        if test is not None:
            with contextlib.suppress(Exception):
                values["test"] = metric_value(metric, *test)
                values["test_examples"] = float(len(test[1]))  # the sample's size
        for name in _VAL_NAMES.get(metric, (f"val_{metric}",)):
            series = history.get(name)
            if isinstance(series, list) and series and isinstance(series[-1], int | float):
                values["validation"] = float(series[-1])
                break
        found[metric] = values
    return found


def heldout_metrics(rubric: Rubric, model: Any) -> tuple[dict[str, float], dict[str, str]]:
    """The rubric's metrics on the held-out split, which the student's notebook never loads."""
    metrics, problems, _, _ = heldout_evaluation(rubric, model)
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
            problems[metric] = (
                f"the model could not be evaluated on your test data: {short_error(exc)}"
            )
    return metrics, problems


def reference_figures(rubric: Rubric) -> dict[str, Any]:
    """Figures the checks compare the student's arrays with, from the grader's copy of the data."""
    if not normalises(rubric):
        return {}
    mean, std, test_x = train_stats(rubric)
    return {
        "test_column_mean_with_train_stats": ((test_x - mean) / std).mean(axis=0).tolist(),
        "train_column_mean": mean.tolist(),
        "test_column_mean_raw": test_x.mean(axis=0).tolist(),
    }


def normalises(rubric: Rubric) -> bool:
    """Whether the rubric checks the normalisation (and so needs the reference figures)."""
    return any(c.kind == "normalisation" for c in rubric.checks)


def model_normalisation(model: Any) -> dict[str, Any]:
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
