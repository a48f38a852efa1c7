"""Capture in a namespace, then grade the artifacts as the clean process does."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from autograder.grading.artifacts import unsafe_layers
from autograder.grading.capture import capture_source
from autograder.grading.evaluate import evaluate_artifacts
from autograder.grading.evaluation_server import grade_in_subprocess
from autograder.rubric import load_rubric

LAB = "lab3_mnist_dense"


def _capture(namespace: dict, out: Path) -> None:
    exec(capture_source(load_rubric(LAB), out), namespace)  # as the grader's cell does


def _dense(keras, hidden=512):
    model = keras.Sequential(
        [
            keras.Input(shape=(784,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def keras():
    import keras

    return keras


@pytest.mark.slow  # trains a model
def test_trained_model_is_graded_from_artifacts(keras, tmp_path, staged_data):
    from autograder.data.loaders import load_mnist

    (x, y), _ = load_mnist()
    x = x.reshape((len(x), 784)).astype("float32") / 255
    y = keras.utils.to_categorical(y, 10)
    network = _dense(keras)
    network.fit(x, y, epochs=2, batch_size=128, verbose=0)
    _capture({"network": network, "train_images": x, "train_labels": y}, tmp_path)
    result = evaluate_artifacts(LAB, tmp_path)
    scores = {c.id: c.score for c in result.checks}
    assert scores["check_architecture"] == 3
    assert scores["check_compile"] == 1
    assert scores["check_inputs"] == 2
    assert result.metrics["accuracy"] > 0.8
    assert result.history["loss"][0] > result.history["loss"][-1]
    assert result.model is not None and result.model["params"] == 407050


def test_array_summaries_find_every_nan_and_infinity(tmp_path):
    """The capture's summary of an array: its range over the numbers in it, and whether
    all of them are finite, whichever non-finite value it holds and wherever."""
    import json

    from autograder.grading.capture import CAPTURE_FILE

    base = np.linspace(-2, 3, 4 * 784, dtype="float32").reshape(4, 784)
    cases = {"clean": (base, True), "ints": (np.arange(12).reshape(3, 4), True)}
    for bad in (np.nan, np.inf, -np.inf):
        for where in (0, 1000, base.size - 1):
            arr = base.copy()
            arr.flat[where] = bad
            cases[f"{bad}@{where}"] = (arr, False)
    for name, (arr, finite) in cases.items():
        out = tmp_path / name
        _capture({"train_images": arr}, out)
        info = json.loads((out / CAPTURE_FILE).read_text())["values"]["train_images"]
        assert info["finite"] is finite, name
        # the range over the numbers; an infinity is one of them, a NaN is not
        kept = arr[~np.isnan(arr)] if arr.dtype.kind == "f" else arr
        assert (info["min"], info["max"]) == (float(kept.min()), float(kept.max())), name


def test_lambda_layer_is_rejected_before_loading(keras, tmp_path, staged_data):
    network = keras.Sequential(
        [
            keras.Input(shape=(784,)),
            keras.layers.Lambda(lambda t: t * 2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    network.compile(optimizer="rmsprop", loss="categorical_crossentropy")
    _capture({"network": network}, tmp_path)
    result = evaluate_artifacts(LAB, tmp_path)
    msg = result.check("check_architecture").messages[0]
    assert "Lambda layer" in msg and "not accepted" in msg
    assert result.check("check_accuracy").score == 0
    assert "accuracy" not in result.metrics


def test_unsafe_layers_finds_nested_custom_objects():
    config = {
        "class_name": "Functional",
        "config": {
            "layers": [
                {"class_name": "Dense", "module": "keras.layers"},
                {"class_name": "MyLayer", "module": "__main__"},
                {"class_name": "Sequential", "config": {"layers": [{"class_name": "Lambda"}]}},
            ]
        },
    }
    assert unsafe_layers(config) == ["Lambda layer", "custom object __main__.MyLayer"]


def test_missing_network_is_reported(tmp_path, staged_data):
    x = np.linspace(0, 1, 7840, dtype="float32").reshape(10, 784)
    _capture({"train_images": x}, tmp_path)
    result = evaluate_artifacts(LAB, tmp_path)
    assert result.check("check_architecture").messages == (
        "`network` is not defined when the notebook finishes",
    )
    assert result.check("check_inputs").score == 1.5  # shape, dtype, range right; labels missing
    assert result.score == 1.5


def test_no_capture_means_the_notebook_did_not_finish(tmp_path, staged_data):
    result = grade_in_subprocess(LAB, tmp_path, timeout=120)
    assert result.score == 0
    assert "did not run to the end" in (result.error or "")
    assert all(c.status == "error" for c in result.checks)


def test_predict_gives_what_model_predict_gives():
    import keras

    from autograder.grading.metrics import predict

    rng = np.random.default_rng(0)
    cnn = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    rnn = keras.Sequential(
        [
            keras.Input(shape=(20,)),
            keras.layers.Embedding(100, 8),
            keras.layers.LSTM(4),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    inputs = keras.Input(shape=(784,))
    two = keras.Model(inputs, [keras.layers.Dense(3)(inputs), keras.layers.Dense(2)(inputs)])
    cases = [
        (_dense(keras, hidden=16), rng.random((2100, 784), dtype=np.float32)),
        (cnn, rng.random((300, 28, 28, 1), dtype=np.float32)),
        (rnn, rng.integers(0, 100, (50, 20))),
    ]
    for model, x in cases:  # batches of 1,024 and a last short one; the LSTM goes to predict
        expected = model.predict(x, batch_size=512, verbose=0)
        np.testing.assert_allclose(predict(model, x), expected, rtol=1e-5, atol=1e-6)
    x = rng.random((10, 784), dtype=np.float32)
    assert [p.shape for p in predict(two, x)] == [(10, 3), (10, 2)]  # several outputs: predict's


def _bomb(path: Path, member_mb: int = 8) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", bytes(member_mb * 2**20))


@pytest.mark.parametrize(
    "case, expected",
    [
        ("bomb", "model.keras member 'model.weights.h5' is compressed over 100:1"),
        ("big-capture", "capture.json is 5 MiB, over the 4 MiB allowed"),
        ("linked-capture", "capture.json is not a regular file"),
        ("fifo-model", "model.keras is not a regular file"),
    ],
)
def test_what_the_kernel_wrote_is_checked_before_it_is_read(tmp_path, staged_data, case, expected):
    import os

    from autograder.grading.artifacts import artifacts_problem

    if case == "bomb":
        _bomb(tmp_path / "model.keras")
    elif case == "big-capture":
        (tmp_path / "capture.json").write_bytes(b" " * (5 * 2**20))
    elif case == "linked-capture":
        (tmp_path / "capture.json").symlink_to("/etc/passwd")
    else:
        os.mkfifo(tmp_path / "model.keras")
    assert artifacts_problem(tmp_path) == expected
    result = evaluate_artifacts("lab3_mnist_dense", tmp_path)
    assert result.score == 0
    assert result.error == f"the files the notebook left for grading were not read: {expected}"


def test_an_ordinary_model_archive_passes_the_checks(keras, tmp_path):
    from autograder.grading.artifacts import artifacts_problem

    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(512), keras.layers.Dense(10)])
    model.save(tmp_path / "model.keras")
    (tmp_path / "capture.json").write_text("{}")
    assert artifacts_problem(tmp_path) is None


@pytest.mark.slow  # trains a model
def test_the_model_is_read_by_an_unprivileged_child(keras, tmp_path, staged_data):
    """As root, the evaluation child runs as the evaluator account, from a private copy of
    what the kernel wrote (here readable by root only), and leaves nothing behind."""
    import os
    import pwd

    from autograder.data.loaders import load_mnist
    from autograder.grading.artifacts import optimizer_iterations
    from autograder.grading.evaluation_server import Evaluator
    from autograder.sandbox.accounts import EVALUATOR_ACCOUNT, evaluator_account
    from autograder.sandbox.files import grader_work_dir

    (x, y), _ = load_mnist()
    x = x.reshape((len(x), 784)).astype("float32") / 255
    network = _dense(keras, hidden=32)
    network.fit(x, keras.utils.to_categorical(y, 10), epochs=2, batch_size=128, verbose=0)
    _capture({"network": network}, tmp_path)
    for path in [tmp_path, *tmp_path.iterdir()]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    with Evaluator((LAB,)) as evaluator:
        result = evaluator.evaluate(LAB, tmp_path, timeout=300)
        uid = evaluator.last_uid
    assert result.error is None and result.metrics["accuracy"] > 0.5
    assert result.witnesses["accuracy@test"] > 0.5  # the model's own test split, scored here
    # and the sizes of both samples, which the memorisation review's noise floor needs
    (_, _), (_, test_y) = load_mnist()
    assert result.witnesses["accuracy@test_examples"] == min(1000, len(test_y))
    assert result.figures["heldout_examples"] == sum(
        map(sum, result.figures["confusion_matrix"]["matrix"])
    )
    if os.geteuid() == 0:
        assert evaluator_account() is not None
        assert uid == pwd.getpwnam(EVALUATOR_ACCOUNT).pw_uid != 0
    else:
        assert uid == os.geteuid()
    assert not list(Path(grader_work_dir()).glob("autograder-*-evaluation-*"))
    # 2 epochs of 24 batches; this process has no fit() record, and the grader says so.
    assert optimizer_iterations(tmp_path / "model.keras") == 48
    assert any(r.startswith("training record missing") for r in result.review), result.review


def _children(pid: int) -> list:
    import psutil

    return [c for c in psutil.Process(pid).children() if c.status() != psutil.STATUS_ZOMBIE]


def _wait_for(predicate, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while not (found := predicate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_the_next_evaluations_child_waits_confined_and_goes_when_unused(
    keras, tmp_path, staged_data
):
    """``Evaluator.prepare`` forks the next evaluation's child ahead: before any capture is
    handed over it already runs as the evaluator account (as root) in a cgroup of its own;
    it then evaluates the next submission, and exits. One prepared and never used is gone
    when the evaluator closes, with its cgroup and folders."""
    import os
    import pwd

    from autograder.grading.evaluation_server import Evaluator
    from autograder.sandbox.accounts import EVALUATOR_ACCOUNT
    from autograder.sandbox.cgroup import PREFIX
    from autograder.sandbox.files import grader_work_dir

    _capture({"network": _dense(keras, hidden=8)}, tmp_path)  # untrained: a model to score
    as_root = os.geteuid() == 0
    with Evaluator((LAB,)) as evaluator:
        assert evaluator.wait_ready()
        server = evaluator._proc.pid
        assert not _children(server)  # none until asked for
        evaluator.prepare()
        children = _wait_for(lambda: _children(server))
        assert len(children) == 1, children
        ahead = children[0]
        if as_root:
            account = pwd.getpwnam(EVALUATOR_ACCOUNT).pw_uid
            assert _wait_for(lambda: ahead.uids().real == account), ahead.uids()
            groups = Path(f"/proc/{ahead.pid}/cgroup").read_text()
            assert f"{PREFIX}evaluation-" in groups, groups
        result = evaluator.evaluate(LAB, tmp_path, timeout=300)
        assert not ahead.is_running()  # it took this evaluation and ended
        assert result.error is None, result.error
        assert "accuracy" in result.metrics
        if as_root:
            assert evaluator.last_uid == account
        evaluator.prepare()
        unused = _wait_for(lambda: _children(server))
        assert unused and unused[0].pid != ahead.pid
    assert not unused[0].is_running()
    assert not list(Path(grader_work_dir()).glob("autograder-*-evaluation-*"))
    assert not list(Path("/sys/fs/cgroup").glob(f"*/**/{PREFIX}evaluation-{server}-*"))


def _memory_holds(pid: int, needle: bytes) -> bool:
    """Whether ``needle`` is anywhere in the writable memory of process ``pid``."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if "w" not in perms or line.rstrip().endswith("[vvar]"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                if needle in mem.read(end - start):
                    return True
            except OSError:  # a mapping that cannot be read (a guard page)
                continue
    return False


def test_an_evaluator_forked_from_the_fork_server_grades_alike_and_leaves_no_secret(
    keras, tmp_path, staged_data, monkeypatch
):
    """Where kernels are forked, a worker's evaluator is forked from the same server (one
    TensorFlow import, not two): it grades a model as a started one does, and what it was
    given (the grader's environment, here a token) never passes through the server, whose
    memory every later kernel inherits. Each evaluation's child leaves no folder and no
    cgroup (removed once its reply is sent: the worker does not wait for that)."""
    import os
    import secrets

    import psutil

    from autograder.data.loaders import load_mnist
    from autograder.grading.evaluation_server import Evaluator
    from autograder.sandbox import forked
    from autograder.sandbox.cgroup import EVALUATION_CGROUP, KernelCgroup
    from autograder.sandbox.files import grader_work_dir
    from autograder.settings import QUIET_TENSORFLOW

    if not forked.forking_wanted():
        pytest.skip("kernels are not forked here (no pidfd_open, or AUTOGRADER_FORK_KERNELS)")
    token = secrets.token_hex(16)
    monkeypatch.setenv("AUTOGRADER_TEST_API_TOKEN", token)
    (x, y), _ = load_mnist()
    x = x.reshape((len(x), 784)).astype("float32") / 255
    network = _dense(keras, hidden=32)
    network.fit(x, keras.utils.to_categorical(y, 10), epochs=1, batch_size=128, verbose=0)
    _capture({"network": network}, tmp_path)
    forked.stop_fork_server()  # an earlier test's, in this process: this one starts anew
    with Evaluator((LAB,)) as started:
        expected = started.evaluate(LAB, tmp_path, timeout=300)
        assert not started.forked
    # A kernel's environment (secrets scrubbed) starts the server, as a kernel's start does.
    kernel_env = {k: v for k, v in os.environ.items() if "TOKEN" not in k}
    server = forked._server({**kernel_env, **QUIET_TENSORFLOW})
    assert server is not None
    try:
        with Evaluator((LAB,)) as evaluator:
            assert evaluator.wait_ready()
            result = evaluator.evaluate(LAB, tmp_path, timeout=300)
            assert evaluator.forked
            child = evaluator._proc.pid
            assert psutil.Process(child).ppid() == server.process.pid
            assert _memory_holds(child, token.encode())  # it has it: the scan finds it
            assert not _memory_holds(server.process.pid, token.encode())
            again = evaluator.evaluate(LAB, tmp_path, timeout=300)
        assert result.error is None and again.metrics == result.metrics
        assert not list(Path(grader_work_dir()).glob(f"autograder-{child}-evaluation-*"))
        named = f"{EVALUATION_CGROUP}{child}-"
        assert not [g for g in KernelCgroup.named_anywhere(named) if g.exists()]
        assert [(c.id, c.score) for c in result.checks] == [
            (c.id, c.score) for c in expected.checks
        ]
        assert result.metrics == expected.metrics
    finally:
        forked.stop_fork_server()


@pytest.mark.slow  # trains a model
def test_held_out_data_reaches_the_model_in_the_form_it_was_trained_in(
    keras, tmp_path, staged_data
):
    """Flattened inside the model: the held-out images go in as (n, 28, 28), as the
    notebook's arrays did; the lab's (n, 784) would not fit this model."""
    from autograder.data.loaders import load_mnist

    (x, y), _ = load_mnist()
    x = x.astype("float32") / 255
    y = keras.utils.to_categorical(y, 10)
    keras.utils.set_random_seed(0)
    network = keras.Sequential(
        [
            keras.Input(shape=(28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    network.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    network.fit(x, y, epochs=2, batch_size=128, verbose=0)
    _capture({"network": network, "train_images": x, "train_labels": y}, tmp_path)
    result = evaluate_artifacts(LAB, tmp_path)
    assert result.preparation == (
        "held-out inputs prepared as the model was trained ((n, 28, 28) float32, values / 255, "
        "learned from `train_images`)"
    )
    assert result.metrics["accuracy"] > 0.8
    assert result.check("check_architecture").score == 3
    assert result.check("check_inputs").score == 1.5  # the rubric's share: arrays as asked


def test_a_model_that_runs_on_no_form_is_explained_not_dumped(keras, tmp_path, staged_data):
    network = keras.Sequential(
        [
            keras.Input(shape=(1, 28, 28)),
            keras.layers.Conv2D(4, 3, data_format="channels_first"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    images = np.zeros((200, 1, 28, 28), "float32")
    from autograder.data.loaders import load_mnist

    (raw, _), _ = load_mnist()
    images[:] = raw[:200, None] / 255
    _capture({"network": network, "train_images": images}, tmp_path)
    result = evaluate_artifacts(LAB, tmp_path)
    (message,) = result.check("check_accuracy").messages
    assert message.startswith(
        "the model could not be evaluated on held-out data: the model takes inputs of shape "
        "(n, 1, 28, 28) and could not be run on the held-out data prepared as the notebook's "
        "arrays ((n, 1, 28, 28) float32): UnimplementedError: The Conv2D op currently only "
        "supports the NHWC tensor format on the CPU"
    )
    assert message.endswith(
        "prepared as the lab asks ((n, 784) float32, values / 255), it could not be run either"
    )
    assert "•" not in message and "{{" not in message


def test_the_last_cell_shows_the_expected_total(keras, capsys):
    from autograder.checks import _SEEN, expected_total

    _SEEN.clear()
    network = _dense(keras)
    x = np.random.default_rng(0).uniform(0, 1, (64, 784)).astype("float32")
    y = keras.utils.to_categorical(np.arange(64) % 10, 10)
    ns = {
        "network": network,
        "train_images": x,
        "train_labels": y,
        "test_images": x,
        "test_labels": y,
    }
    assert expected_total(LAB, ns) == 6  # untrained: everything but the accuracy
    out = " ".join(capsys.readouterr().out.split())
    assert "Network architecture 3 / 3" in out
    assert "Held-out accuracy ~0 / 4" in out
    assert "automatic total ~6 / 10" in out
    assert "Nothing is left to the instructor" in out
    # A lab with a written answer says what the instructor grades, on a broken notebook too.
    assert expected_total("lab5_imdb_rnn", {}) == 0
    out = capsys.readouterr().out
    assert "Left to the instructor: Written answer on SimpleRNN and LSTM (2 points)" in out


@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "polled"])
def test_the_evaluator_waits_for_its_child_and_kills_it_at_the_deadline(monkeypatch, pidfds):
    """An evaluation child's exit status as it ends; one past its deadline killed (with
    what it started) and reaped: a kernel with pidfds and one without alike."""
    import os
    import time

    from autograder.grading import evaluation_server

    if not pidfds:

        def no_pidfd(pid: int, flags: int = 0) -> int:
            raise OSError(38, "Function not implemented")

        monkeypatch.setattr(os, "pidfd_open", no_pidfd)

    def child(seconds: float, code: int) -> int:
        pid = os.fork()
        if pid == 0:
            os.setsid()
            time.sleep(seconds)
            os._exit(code)
        return pid

    begin = time.monotonic()
    assert evaluation_server._wait(child(0.1, 3), timeout=30) == 3
    assert time.monotonic() - begin < 5
    slow = child(60, 0)
    begin = time.monotonic()
    assert evaluation_server._wait(slow, timeout=0.3) is None
    assert time.monotonic() - begin < 5
    with pytest.raises(ChildProcessError):
        os.waitpid(slow, os.WNOHANG)  # reaped already


def test_tf_data_pipelines_run_untuned_with_the_same_elements(keras, monkeypatch):
    """The set-up a lab's kernel runs before the first cell turns tf.data's autotuning off
    for every pipeline as it is iterated (Keras's own included), and the elements stay the
    same; the evaluator's children run the same code. Fails where TensorFlow no longer has
    the method it hooks."""
    import sys

    import tensorflow as tf
    from tensorflow.python.data.ops import dataset_ops

    from autograder.grading.execute import LAB_KERNEL_SETUP
    from autograder.grading.tf_data import untune_tf_data

    # Put back after the test: the set-up also wraps Model.fit and adds a module.
    monkeypatch.setattr(keras.Model, "fit", keras.Model.fit)
    monkeypatch.setitem(sys.modules, "_autograder_fits", None)
    hooked = dataset_ops.DatasetV2._apply_debug_options
    monkeypatch.setattr(dataset_ops.DatasetV2, "_apply_debug_options", hooked)

    auto = tf.data.AUTOTUNE
    ds = tf.data.Dataset.range(50).map(lambda x: x * 2, num_parallel_calls=auto).batch(7)
    ds = ds.prefetch(auto)
    before = [b.numpy().tolist() for b in ds]
    assert ds._apply_debug_options().options().autotune.enabled is None  # on by default

    exec(LAB_KERNEL_SETUP, {})
    assert ds._apply_debug_options().options().autotune.enabled is False
    assert [b.numpy().tolist() for b in ds] == before
    untuned = dataset_ops.DatasetV2._apply_debug_options
    untune_tf_data()  # the evaluator's call, after the kernel's: once is enough
    assert dataset_ops.DatasetV2._apply_debug_options is untuned

    # Keras's fit and predict go through it, and still train and predict.
    seen = []
    monkeypatch.setattr(
        dataset_ops.DatasetV2,
        "_apply_debug_options",
        lambda self: seen.append(1) or untuned(self),
    )
    model = _dense(keras, hidden=4)
    x = np.random.default_rng(0).random((64, 784), dtype=np.float32)
    y = keras.utils.to_categorical(np.arange(64) % 10, 10)
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert len(history.epoch) == 2 and seen
    n = len(seen)
    np.testing.assert_allclose(model.predict(x, verbose=0), model(x), rtol=1e-5, atol=1e-6)
    assert len(seen) > n


def test_the_fit_record_gives_the_validation_size(keras, monkeypatch):
    """The kernel's fit() record says how many examples the validation score is measured
    on, as keras splits them: the memorisation review's noise floor for that gap."""
    import sys

    from autograder.grading.capture import FIT_RECORDER_SOURCE
    from autograder.grading.evaluate import _validation_examples

    monkeypatch.setattr(keras.Model, "fit", keras.Model.fit)  # put back after the test
    monkeypatch.setitem(sys.modules, "_autograder_fits", None)
    exec(FIT_RECORDER_SOURCE, {})
    record = sys.modules["_autograder_fits"]
    model = _dense(keras, hidden=4)
    x = np.random.default_rng(0).random((101, 784), dtype=np.float32)
    y = keras.utils.to_categorical(np.arange(101) % 10, 10)
    model.fit(x, y, epochs=1, batch_size=32, validation_split=0.2, verbose=0)
    model.fit(x[:70], y[:70], epochs=1, validation_data=(x[70:], y[70:]), verbose=0)
    model.fit(x, y, epochs=1, verbose=0)
    # keras keeps floor(101 * 0.8) = 80 for training: 21 validate
    assert [c.get("validation_examples") for c in record.calls] == [21, 31, None]
    calls = tuple({**c, "graded_model": True} for c in record.calls)
    assert _validation_examples(calls) == {"validation_examples": 31.0}
    assert _validation_examples(calls[:1]) == {"validation_examples": 21.0}
    assert _validation_examples(({**calls[0], "graded_model": False},)) == {}
