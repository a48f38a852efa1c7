"""Example submissions, built from each lab's release by declarative edits of answer cells.

A submission is the student's release notebook with its solution cells filled in. The
correct example fills them with the instructor's solution; every other example replaces
some answers. ``build_examples`` writes them under ``autograder/examples/<lab>/``, and a
test fails when the committed files drift from what it would write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .rubric import load_rubric

__all__ = ["EXAMPLES", "Example", "build_examples", "example_path", "examples_dir"]

_SOLUTION = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?", re.M)


@dataclass(frozen=True)
class Example:
    description: str
    answers: dict[str, str] = field(default_factory=dict)  # grade_id -> cell source


EXAMPLES: dict[str, dict[str, Example]] = {
    "lab3_mnist_dense": {
        "correct": Example("the reference solution, as a student would write it"),
        "wrong-architecture": Example(
            "a 64-unit sigmoid hidden layer instead of 512 relu",
            {
                "build_network": (
                    "network = keras.Sequential([\n"
                    "    keras.Input(shape=(28 * 28,)),\n"
                    '    layers.Dense(64, activation="sigmoid"),\n'
                    '    layers.Dense(10, activation="softmax"),\n'
                    "])\n"
                    "network.summary()"
                )
            },
        ),
        "not-scaled": Example(
            "images reshaped but left as integers from 0 to 255",
            {
                "prepare_images": (
                    "train_images = train_images.reshape((len(train_images), 28 * 28))\n"
                    "test_images = test_images.reshape((len(test_images), 28 * 28))"
                )
            },
        ),
        "not-reshaped": Example(
            "images neither reshaped nor scaled, so training fails",
            {"prepare_images": "# I left the images as they are"},
        ),
        "untrained": Example(
            "the network is compiled but never trained",
            {"train": "# skipping training to save time\nhistory = None"},
        ),
        "badly-trained": Example(
            "trained for one epoch on 300 images only",
            {"train": "history = network.fit(train_images[:300], train_labels[:300], epochs=1)"},
        ),
        "monkeypatched-evaluate": Example(
            "barely trained, then Model.evaluate monkeypatched to report 99.9% accuracy",
            {
                "train": "history = network.fit(train_images[:32], train_labels[:32], epochs=1)",
                "evaluate": (
                    "keras.Model.evaluate = lambda self, *args, **kwargs: [0.01, 0.999]\n"
                    "test_loss, test_acc = network.evaluate(test_images, test_labels)\n"
                    'print("test_acc:", test_acc)'
                ),
            },
        ),
    },
}


def examples_dir() -> Path:
    return Path(__file__).parent / "examples"


def example_path(lab: str, name: str) -> Path:
    return examples_dir() / lab / f"{name}.ipynb"


def _solutions(source_nb: nbformat.NotebookNode) -> dict[str, str]:
    out = {}
    for cell in source_nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            out[meta["grade_id"]] = _SOLUTION.sub("", cell.source).strip("\n")
    return out


def build_examples(
    source_root: Path,
    release_root: Path,
    out_root: Path | None = None,
    labs: list[str] | None = None,
) -> list[Path]:
    """Write every example notebook; return their paths."""
    out_root = out_root or examples_dir()
    written = []
    for lab in labs or sorted(EXAMPLES):
        notebook = load_rubric(lab).notebook + ".ipynb"
        solutions = _solutions(nbformat.read(source_root / lab / notebook, as_version=4))
        release = release_root / lab / notebook
        for name, example in EXAMPLES[lab].items():
            unknown = set(example.answers) - set(solutions)
            if unknown:
                raise ValueError(f"{lab}/{name}: no solution cell {', '.join(sorted(unknown))}")
            nb = nbformat.read(release, as_version=4)
            for cell in nb.cells:
                meta = cell.metadata.get("nbgrader", {})
                if meta.get("solution"):
                    gid = meta["grade_id"]
                    cell.source = example.answers.get(gid, solutions[gid])
            path = out_root / lab / f"{name}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, path)
            written.append(path)
    return written
