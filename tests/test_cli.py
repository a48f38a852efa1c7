from __future__ import annotations

import subprocess
import sys

from autograder.cli import main


def test_release_check_passes_on_the_committed_tree(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    assert main(["release", "--check"]) == 0
    assert "release/ matches source/" in capsys.readouterr().out


def test_user_errors_are_one_line_with_an_exit_code(capsys):
    assert main(["calibrate", "no_such_lab", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "autograder: error: no rubric for lab 'no_such_lab' (known: "
        "lab3_boston_regression, lab3_mnist_dense, lab4_mnist_cnn, lab5_imdb_rnn)"
    ]


def test_missing_data_names_the_staging_command(tmp_path):
    env = {"AUTOGRADER_DATA_DIR": str(tmp_path / "nothing"), "PATH": "/usr/bin:/bin"}
    code = "from autograder.data.loaders import load_mnist; load_mnist()"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    assert "autograder stage-data" in proc.stderr
