from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from autograder.authoring.examples import examples_dir
from autograder.cli import main
from autograder.hub.launch import wait_until_up


def test_release_check_passes_on_the_committed_tree(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    assert main(["release", "--check"]) == 0
    assert "release/ and the example notebooks match source/" in capsys.readouterr().out


def test_release_check_fails_on_an_example_no_examples_file_declares(
    repo, tmp_path, monkeypatch, capsys
):
    lab = "lab3_mnist_dense"
    shutil.copytree(repo / "source" / lab, tmp_path / "source" / lab)
    examples = tmp_path / "examples"
    shutil.copytree(examples_dir(), examples)
    shutil.copyfile(examples / lab / "correct.ipynb", examples / lab / "stray.ipynb")
    monkeypatch.setattr("autograder.authoring.examples.examples_dir", lambda: examples)
    argv = ["release", "--check", "--source", str(tmp_path / "source")]
    assert main([*argv, "--release", str(repo / "release")]) == 1
    out = capsys.readouterr().out
    assert f"{lab}/stray.ipynb (not declared in {lab}.examples.toml)" in out
    assert "correct.ipynb" not in out  # the declared ones match


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


def test_a_hub_that_dies_at_start_is_reported_at_once_with_its_output(tmp_path):
    """`autograder hub` (and the hub tests' fixtures) wait for the hub's login page: a hub
    that exits first is reported when it exits, not after the whole wait, with the end of
    its output; one that never answers, after the wait, with the same."""
    log = tmp_path / "hub.log"
    url = "http://127.0.0.1:9/hub/login"  # the discard port: nothing answers
    with log.open("ab") as out:
        code = "print('[E] the proxy could not start: port in use'); raise SystemExit(3)"
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=out)
    start = time.monotonic()
    with pytest.raises(TimeoutError) as died:
        wait_until_up(url, timeout=60, proc=proc, log=log)
    assert time.monotonic() - start < 20
    assert str(died.value).startswith(f"the hub exited (status 3) before {url} answered")
    assert "the proxy could not start: port in use" in str(died.value)
    with pytest.raises(TimeoutError) as silent:
        wait_until_up(url, timeout=1, log=log)
    assert "did not answer within 1 s" in str(silent.value)
    assert "port in use" in str(silent.value)


def test_the_hub_supervisor_ends_a_process_whose_first_thread_ended(tmp_path):
    """Whatever the supervised command left runs to its end with it, a process whose first
    thread ended while another runs on (it shows as a zombie in /proc) included."""
    pid_file = tmp_path / "left.pid"
    left = (
        "import ctypes, os, sys, threading, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    threading.Thread(target=time.sleep, args=(120,)).start()\n"
        f"    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "    ctypes.CDLL(None).pthread_exit(None)\n"
        f"while not os.path.exists({str(pid_file)!r}):\n"
        "    time.sleep(0.01)\n"
    )
    supervise = [sys.executable, "-m", "autograder.hub.supervise", "--grace", "1"]
    done = subprocess.run([*supervise, "--", sys.executable, "-c", left], timeout=60, check=False)
    pid = int(pid_file.read_text())
    try:
        assert done.returncode == 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.05)  # killed, then reaped by init
        assert not os.path.exists(f"/proc/{pid}"), "left running after its supervisor"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
