"""Generated files: release/ and the example submissions must match what the commands write."""

from __future__ import annotations

import shutil

import nbformat

from autograder.authoring.release import release_drift

# release/ and the example notebooks match source/, and no example is undeclared:
# tests/test_cli.py::test_release_check_passes_on_the_committed_tree (`autograder release
# --check`, which generates every lab and example once) and
# ::test_release_check_fails_on_an_example_no_examples_file_declares.


def test_release_is_a_student_version(repo):
    # The committed release, which `release --check` holds equal to a fresh generation.
    text = (repo / "release" / "lab3_mnist_dense" / "lab3_mnist_dense.ipynb").read_text()
    assert "### BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert "Dense(512" not in text  # the solution is gone
    assert 'self_check(\\"lab3_mnist_dense\\", \\"check_architecture\\"' in text  # visible test


def test_changed_source_is_reported_as_drift(repo, tmp_path):
    source = tmp_path / "source"
    # one lab is enough: the drift check generates the labs the source folder holds
    shutil.copytree(repo / "source" / "lab3_mnist_dense", source / "lab3_mnist_dense")
    path = source / "lab3_mnist_dense" / "lab3_mnist_dense.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].source += "\n\nA new sentence."
    nbformat.write(nb, path)
    assert release_drift(source, repo / "release") == ["lab3_mnist_dense/lab3_mnist_dense.ipynb"]
