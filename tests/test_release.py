"""Generated files: release/ and the example submissions must match what the commands write."""

from __future__ import annotations

import filecmp
import shutil

import nbformat

from autograder.examples import EXAMPLES, build_examples, examples_dir
from autograder.release import generate_release, release_drift


def test_release_matches_source(repo):
    assert release_drift(repo / "source", repo / "release") == []


def test_release_is_a_student_version(repo, tmp_path):
    generate_release(repo / "source", tmp_path, ["lab3_mnist_dense"])
    text = (tmp_path / "lab3_mnist_dense" / "lab3_mnist_dense.ipynb").read_text()
    assert "### BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert "Dense(512" not in text  # the solution is gone
    assert 'self_check(\\"lab3_mnist_dense\\", \\"check_architecture\\"' in text  # visible test


def test_changed_source_is_reported_as_drift(repo, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(repo / "source", source)
    path = source / "lab3_mnist_dense" / "lab3_mnist_dense.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].source += "\n\nA new sentence."
    nbformat.write(nb, path)
    assert release_drift(source, repo / "release") == ["lab3_mnist_dense/lab3_mnist_dense.ipynb"]


def test_examples_match_their_spec(repo, tmp_path):
    written = build_examples(repo / "source", repo / "release", out_root=tmp_path)
    assert len(written) == sum(len(v) for v in EXAMPLES.values())
    for path in written:
        committed = examples_dir() / path.relative_to(tmp_path)
        assert filecmp.cmp(path, committed, shallow=False), f"{committed} is out of date"
