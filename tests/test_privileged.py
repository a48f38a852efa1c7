"""The grading service (the privileged step): who may ask, and what it takes.

Its execution of a whole submission, started from the formgrader as a TA, is tested on the
real hub (tests/test_hub.py::test_student_to_feedback)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grading_helpers as gh
import nbformat
import pytest

from autograder.errors import GradingError
from autograder.hub.grading_service import HelperSettings, request_execution

GRADER = "nobody"  # stands in for the course's grader account
CLIENT = """
import json, sys
from nbformat import from_dict
from autograder.hub.grading_service import request_execution
old = from_dict({"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": []})
try:
    request_execution(sys.argv[1], "lab3_mnist_dense", old, {}, timeout=60)
except Exception as exc:
    print(json.dumps(str(exc)))
"""


@contextlib.contextmanager
def _started_service() -> Iterator[Path]:
    """A grading service of its own (a course of one lab), until its socket is there."""
    if os.geteuid() != 0:
        pytest.fail("the grading service runs as root: run the tests as root (make test)")
    base = Path(tempfile.mkdtemp(prefix="autograder-svc-", dir="/tmp"))
    base.chmod(0o755)
    settings = base / "state" / "grading-service.json"
    settings.parent.mkdir(mode=0o700)
    sock = base / "run" / "grading.sock"
    HelperSettings(socket=str(sock), grader=GRADER, labs=("lab3_mnist_dense",)).write(settings)
    cmd = [sys.executable, "-I", "-m", "autograder.hub.grading_service", "serve", "--settings"]
    proc = subprocess.Popen([*cmd, str(settings)], cwd=settings.parent, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        assert sock.exists(), proc.stderr.read().decode() if proc.poll() is not None else ""
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
    assert not sock.exists()


@pytest.fixture(scope="module")
def service():
    with _started_service() as sock:
        yield sock


def test_a_service_starting_cleans_what_a_killed_grader_left():
    """A service killed mid-request leaves its children's slots as a killed batch does:
    the next service start cleans every free slot (its socket appears after that)."""
    with gh.leftovers_of_a_killed_grader() as left, _started_service():
        assert left.sleeper.wait(timeout=10) == -signal.SIGKILL
        assert left.remaining() == []


def _ask_as(user: str, sock: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, str(sock)],
        user=user,
        group=pwd.getpwnam(user).pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


def test_socket_reachable_by_root_and_the_grader_only(service):
    assert oct(service.stat().st_mode & 0o777) == "0o660"
    assert oct(service.parent.stat().st_mode & 0o777) == "0o750"
    # Another account cannot reach the socket at all.
    assert "did not answer" in _ask_as("daemon", service)
    # The grader reaches it and is answered (a version 3 notebook, refused for what it is).
    assert "not a version 4 notebook" in _ask_as(GRADER, service)


def test_only_the_course_labs_and_plain_file_names_are_taken(service):
    nb = nbformat.v4.new_notebook()
    with pytest.raises(GradingError, match="not a lab of this course"):
        request_execution(str(service), "../../etc", nb, {}, timeout=60)
    with pytest.raises(GradingError, match="refused name"):
        request_execution(str(service), "lab3_mnist_dense", nb, {"../x": b"1"}, timeout=60)
