"""Limits on the student's kernel: time, memory, network, account, processes, files, output
(autograder/sandbox/).

One lab 3 submission that tests a limit goes through nbgrader autograde with small
limits; the watchdog, the limits' configuration, the network namespace, the sandbox
account and the resource limits are tested on their own. The whole corpus of untrusted
submissions is graded in one batch by tests/test_adversarial.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import grading_helpers as gh
import nbformat
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from autograder.authoring.examples import EXAMPLES, example_path
from autograder.course import create_course
from autograder.errors import ConfigError
from autograder.grading.evaluate import evaluate_artifacts
from autograder.grading.execute import GraderExecute
from autograder.sandbox.accounts import ACCOUNT_PREFIX
from autograder.sandbox.files import close_to_others
from autograder.sandbox.isolation import isolation_prefix
from autograder.sandbox.kernel import KernelSandbox, SandboxedKernelManager
from autograder.sandbox.stops import read_stop, record_stop
from autograder.sandbox.watchdog import Watchdog
from autograder.settings import Limits

LAB = "lab3_mnist_dense"
# A limit through the serial path (nbgrader autograde, as the formgrader runs it); the whole
# corpus, network access and the time limit included, goes through the batch in
# tests/test_adversarial.py.
ADVERSARIAL = ["memory-hog"]
NOTEBOOK_TIMEOUT = int(gh.ADVERSARIAL_LIMITS["AUTOGRADER_NOTEBOOK_TIMEOUT"])
MEMORY_MB = int(gh.ADVERSARIAL_LIMITS["AUTOGRADER_MEMORY_MB"])
ISOLATED = isolation_prefix() is not None


# --- the adversarial submissions, through nbgrader ------------------------------------------


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory, staged_data: None):
    """The adversarial examples in one course, each graded under the tight test limits."""
    root = tmp_path_factory.mktemp("sandbox") / "course"
    with gh.environment(gh.QUICK):
        course = create_course(root, labs=[LAB])
    outcomes, seconds = {}, {}
    for name in ADVERSARIAL:
        course.submit(name, LAB, example_path(LAB, name))
        started = time.monotonic()
        with gh.environment({**gh.QUICK, **gh.limits_for(LAB, name)}):
            outcomes[name] = course.autograde(LAB, name)
        seconds[name] = time.monotonic() - started
    return course, outcomes, seconds


def test_adversarial_examples_are_declared():
    assert all(EXAMPLES[LAB][name].adversarial for name in ADVERSARIAL)
    assert not EXAMPLES[LAB]["correct"].adversarial


@pytest.mark.slow
@pytest.mark.parametrize(
    ("student", "reason"),
    [("memory-hog", f"memory limit exceeded: the notebook used more than {MEMORY_MB} MiB")],
)
def test_stopped_notebook_is_graded_zero_with_the_reason(graded, student, reason):
    course, outcomes, seconds = graded
    assert outcomes[student]["success"], outcomes[student].get("error")
    result = gh.result_of(course, LAB, student)
    assert result.error is not None and result.error.startswith(reason)
    assert result.score == 0
    assert all(c.score == 0 and c.messages[0].startswith(reason) for c in result.checks)
    nb = gh.autograded(course, LAB, student)
    # The graded cells carry the reason, and so does the cell where the kernel was stopped.
    for check in result.checks:
        assert reason in gh.shown(gh.cell(nb, check.id))
    train = gh.cell(nb, "train")
    assert "KernelStopped" in gh.shown(train) and reason in gh.shown(train)
    # Only this notebook's time: the limit, starting the kernel, evaluating, nbgrader.
    assert seconds[student] < NOTEBOOK_TIMEOUT + 45


# --- limits: configuration ------------------------------------------------------------------


def test_limits_defaults_and_environment():
    assert Limits.from_env({}) == Limits(900, 1800, 4096, False)
    env = {
        "AUTOGRADER_CELL_TIMEOUT": "60",
        "AUTOGRADER_NOTEBOOK_TIMEOUT": " 120 ",
        "AUTOGRADER_MEMORY_MB": "2048",
    }
    assert Limits.from_env(env) == Limits(60, 120, 2048)
    assert Limits.from_env({"AUTOGRADER_MEMORY_MB": ""}) == Limits()  # empty: unset
    defaults = Limits(cell_timeout_s=30)
    assert Limits.from_env({"AUTOGRADER_MEMORY_MB": "100"}, defaults=defaults) == Limits(
        30, 1800, 100
    )


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5", "4GB"])
@pytest.mark.parametrize(
    "var", ["AUTOGRADER_CELL_TIMEOUT", "AUTOGRADER_NOTEBOOK_TIMEOUT", "AUTOGRADER_MEMORY_MB"]
)
def test_bad_limit_in_environment_is_a_config_error(var, value):
    with pytest.raises(ConfigError, match=f"{var} must be a positive whole number"):
        Limits.from_env({var: value})


def test_bad_limit_value_is_refused():
    with pytest.raises(ConfigError, match="memory_mb"):
        Limits(memory_mb=0)


def test_grader_execute_limits_precedence(monkeypatch):
    monkeypatch.setenv("AUTOGRADER_CELL_TIMEOUT", "77")
    monkeypatch.setenv("AUTOGRADER_MEMORY_MB", "3000")
    ex = GraderExecute(timeout=900, memory_limit_mb=1234)
    # traits set on GraderExecute > environment > `timeout` and the defaults
    assert ex.limits() == Limits(cell_timeout_s=77, memory_mb=1234)
    monkeypatch.delenv("AUTOGRADER_CELL_TIMEOUT")
    assert ex.limits().cell_timeout_s == 900
    assert GraderExecute(cell_timeout=5, allow_network=True).limits().network


def test_grader_execute_refuses_a_bad_environment_when_built(monkeypatch):
    monkeypatch.setenv("AUTOGRADER_NOTEBOOK_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="AUTOGRADER_NOTEBOOK_TIMEOUT"):
        GraderExecute()


def test_evaluation_reports_the_limit_when_nothing_was_captured(tmp_path):
    reason = "memory limit exceeded: the notebook used more than 10 MiB"
    record_stop(tmp_path, "memory", reason, Limits(memory_mb=10))
    assert read_stop(tmp_path) == reason
    result = evaluate_artifacts(LAB, tmp_path)
    assert result.error is not None and result.error.startswith(reason)
    assert all(c.messages[0].startswith(reason) and c.score == 0 for c in result.checks)
    (tmp_path / "limit.json").unlink()
    assert "did not run to the end" in (evaluate_artifacts(LAB, tmp_path).error or "")


# --- the watchdog on plain processes -------------------------------------------------------

HOG = textwrap.dedent(
    """
    import time
    hoard = []
    while True:
        hoard.append(bytearray(20 * 2**20))
        time.sleep(0.02)
    """
)


def _python(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def test_watchdog_kills_a_memory_hog_and_its_parent():
    # The hog is a child: the tree's memory counts, and the whole tree goes.
    proc = _python(f"import subprocess, sys; subprocess.run([sys.executable, '-c', {HOG!r}])")
    parent = psutil.Process(proc.pid)
    started = time.monotonic()
    with Watchdog(proc.pid, Limits(memory_mb=200, notebook_timeout_s=60)) as dog:
        children: list[psutil.Process] = []
        while not children and proc.poll() is None:
            children = parent.children()
            time.sleep(0.01)
        assert proc.wait(timeout=30) == -9
    assert time.monotonic() - started < 15
    assert dog.kind == "memory"
    assert dog.reason == "memory limit exceeded: the notebook used more than 200 MiB"
    assert dog.peak_rss_mb > 200
    assert children
    deadline = time.monotonic() + 5
    while not all(map(_gone, children)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(map(_gone, children))  # the hog went with its parent


def _hog_with_members(
    members: Path, monkeypatch: pytest.MonkeyPatch, listed: bool
) -> tuple[Watchdog, list[set[int] | None]]:
    """A memory hog under a parent, watched with ``members`` as its cgroup's process list
    (the hog's pid written there once it runs, if ``listed``); what each poll read."""
    from autograder.sandbox import watchdog

    read: list[set[int] | None] = []
    real = watchdog.stat_table

    def recorded(pids: set[int] | None = None) -> dict[int, object]:
        read.append(None if pids is None else set(pids))
        return real(pids)

    monkeypatch.setattr(watchdog, "stat_table", recorded)
    proc = _python(f"import subprocess, sys; subprocess.run([sys.executable, '-c', {HOG!r}])")
    try:
        with Watchdog(
            proc.pid, Limits(memory_mb=200, notebook_timeout_s=60), members=str(members)
        ) as dog:
            children: list[psutil.Process] = []
            while not children and proc.poll() is None:
                children = psutil.Process(proc.pid).children()
                time.sleep(0.01)
            if listed:
                members.write_text(f"{children[0].pid}\n")
            assert proc.wait(timeout=30) == -9
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert dog.kind == "memory" and dog.peak_rss_mb > 200
    return dog, read


def test_watchdog_reads_only_its_cgroups_processes(tmp_path, monkeypatch):
    """Given the kernel's cgroup process list, a poll reads the stat files of those
    processes and the watched one, not every process of the machine; the tree's memory is
    still summed from them, and the tree killed."""
    members = tmp_path / "cgroup.procs"
    members.write_text("")
    _, read = _hog_with_members(members, monkeypatch, listed=True)
    assert read and all(pids is not None and len(pids) <= 2 for pids in read)
    assert len(set().union(*(p for p in read if p is not None))) == 2


def test_watchdog_reads_every_process_once_its_cgroup_is_gone(tmp_path, monkeypatch):
    _, read = _hog_with_members(tmp_path / "gone" / "cgroup.procs", monkeypatch, listed=False)
    assert read and all(pids is None for pids in read)


def _gone(p: psutil.Process) -> bool:
    """Dead, or a zombie waiting for its new parent to reap it."""
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_watchdog_kills_a_sleeper_at_the_notebook_time_limit():
    proc = _python("import time; time.sleep(120)")
    started = time.monotonic()
    with Watchdog(proc.pid, Limits(notebook_timeout_s=1)) as dog:
        assert proc.wait(timeout=10) == -9
    assert 0.9 < time.monotonic() - started < 5
    assert dog.kind == "notebook_time"
    assert dog.reason == "time limit exceeded: the notebook ran longer than 1 s"


# A process whose first thread ends while another sleeps on: /proc shows it as a zombie.
FIRST_THREAD_ENDS = (
    "import ctypes, threading, time\n"
    "threading.Thread(target=time.sleep, args=(120,)).start()\n"
    "print('ready', flush=True)\n"
    "ctypes.CDLL(None).pthread_exit(None)\n"
)


def test_watchdog_still_watches_a_process_whose_first_thread_ended():
    """A process whose first thread ended while another runs on shows as a zombie; it still
    runs, and is still killed at the time limit."""
    proc = _python(FIRST_THREAD_ENDS)
    try:
        with Watchdog(proc.pid, Limits(notebook_timeout_s=2)) as dog:
            assert proc.wait(timeout=10) == -9
        assert dog.kind == "notebook_time"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_watchdog_leaves_a_process_within_its_limits_alone():
    proc = _python("import time; time.sleep(1.5)")
    with Watchdog(proc.pid, Limits(memory_mb=500, notebook_timeout_s=30)) as dog:
        assert proc.wait(timeout=10) == 0
    assert dog.reason is None and dog.kind is None


# --- GraderExecute on small notebooks (no nbgrader, no TensorFlow) -----------------------------


def _run(tmp_path: Path, *sources: str, **traits) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    resources = {"nbgrader": {"assignment": "not-a-lab"}, "metadata": {"path": str(tmp_path)}}
    nb, _ = GraderExecute(**traits).preprocess(nb, resources)
    return nb


def test_the_grader_puts_its_own_environment_back_after_a_kernel(monkeypatch):
    """TensorFlow's settings for a lab's kernel are set in the grader's environment around
    the kernel's start, then put back as they were: one the grader had keeps its value, one
    it had not stays unset. (nbgrader's ``utils.setenv`` deletes them all afterwards: a
    later TensorFlow import in the grading process then ran without them.)"""
    from autograder.sandbox.spare import discard_spare_kernel
    from autograder.settings import FORK_KERNELS_ENV

    monkeypatch.setenv(FORK_KERNELS_ENV, "off")  # a kernel started, not a fork server's
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    before = dict(os.environ)
    try:
        GraderExecute(spare_kernel=True).start_kernel_ahead()
    finally:
        discard_spare_kernel()
    assert dict(os.environ) == before


def test_a_discarded_spare_kernel_leaves_no_socket_open():
    """A spare kernel never used is stopped with its manager's control socket closed: left
    to the garbage collector, ending that context can wait for ever (a test session hung
    there, at its end, with a trial version that connected a second client to it)."""
    from autograder.sandbox import spare

    try:
        GraderExecute(spare_kernel=True).start_kernel_ahead()
        (ahead,) = spare._SPARE
        assert ahead.km._control_socket is not None
    finally:
        spare.discard_spare_kernel()
    assert ahead.km._control_socket is None


def test_cell_timeout_interrupts_the_cell_and_says_so(tmp_path):
    nb = _run(
        tmp_path,
        "print('before')",
        "import time\nwhile True:\n    time.sleep(0.1)",
        "print('after')",
        cell_timeout=2,
    )
    shown = gh.shown(nb.cells[1])
    assert "CellTimeoutError" in shown
    assert "time limit exceeded: this cell ran longer than 2 s" in shown
    assert "after" in gh.shown(nb.cells[2])  # interrupted, not killed: the notebook goes on


@pytest.fixture
def socket_dir(monkeypatch: pytest.MonkeyPatch):
    """A temp folder of our own (short: a unix socket's path holds 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="sbx-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_kernel_stopped_for_memory_leaves_the_other_cells_with_the_reason(tmp_path, socket_dir):
    started = time.monotonic()
    # A kernel forked from the fork server starts near 300 MiB resident (its preloaded
    # libraries, shared with the server).
    nb = _run(tmp_path, "print('before')", HOG, "print('after')", memory_limit_mb=800)
    assert time.monotonic() - started < 30
    assert list(socket_dir.iterdir()) == []  # the killed kernel's socket folder is gone too
    reason = "memory limit exceeded: the notebook used more than 800 MiB"
    assert "before" in gh.shown(nb.cells[0])
    for cell in nb.cells[1:]:
        assert "KernelStopped" in gh.shown(cell) and reason in gh.shown(cell)
    assert "after" not in gh.shown(nb.cells[2])


# --- the network namespace ------------------------------------------------------------------


def _connect_from_kernel(network: bool, port: int) -> str:
    code = textwrap.dedent(
        f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
            print("connected")
        except OSError as exc:
            print("refused:", exc)
        """
    )
    return _in_kernel(code, network=network)


def _in_kernel(
    code: str, *, network: bool = False, limits: Limits | None = None, cwd: Path | None = None
) -> str:
    """What ``code`` prints in a sandboxed kernel (a sandbox of the manager's own)."""

    async def run() -> str:
        km = SandboxedKernelManager(network=network)
        km.limits = limits
        await km.start_kernel(cwd=str(cwd) if cwd else None)
        kc = km.client()
        kc.start_channels()
        out: list[str] = []
        try:
            await kc.wait_for_ready(timeout=60)
            assert km.isolated == (ISOLATED and not network)
            assert km.transport == ("ipc" if km.isolated else "tcp")

            def hook(msg) -> None:
                if msg["msg_type"] == "stream":
                    out.append(msg["content"]["text"])
                elif msg["msg_type"] == "error":
                    out.append(f"{msg['content']['ename']}: {msg['content']['evalue']}\n")

            await kc.execute_interactive(code, timeout=30, output_hook=hook)
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)
        return "".join(out)

    return asyncio.run(run())


@pytest.mark.skipif(not ISOLATED, reason="network namespaces are not available here")
def test_kernel_cannot_reach_the_host_network():
    # A server on the grader's own loopback: outside the namespace it answers.
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert "Network is unreachable" in _connect_from_kernel(False, port)
        assert "connected" in _connect_from_kernel(True, port)


# --- the sandbox account, resource limits, output -------------------------------------------


SEPARATE = os.geteuid() == 0 and gh.separate_accounts()
needs_account = pytest.mark.skipif(
    not SEPARATE, reason="no sandbox account here (not root, or AUTOGRADER_SANDBOX_USER=off)"
)

WHO = textwrap.dedent(
    """
    import os, pwd, resource
    from pathlib import Path
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    print("user", pwd.getpwuid(os.getuid()).pw_name, os.getuid(), os.geteuid())
    print("groups", os.getgroups())
    print("no_new_privs", status["NoNewPrivs"].strip(), "caps", status["CapEff"].strip())
    print("home", os.environ["HOME"], os.access(os.environ["HOME"], os.W_OK))
    print("cwd", os.getcwd(), sorted(os.listdir(".")))
    print("core", resource.getrlimit(resource.RLIMIT_CORE))
    print("token", os.environ.get("JUPYTERHUB_API_TOKEN"), os.environ.get("PWD"))
    from autograder.data.loaders import data_dir, load_mnist
    print("public", load_mnist()[0][0].shape, data_dir())
    for path in [HELDOUT, data_dir() / "heldout" / "mnist.npz"]:
        try:
            open(path, "rb").close()
            print("read", path)
        except OSError as exc:
            print("no access", path, type(exc).__name__)
    """
)


@needs_account
def test_an_account_that_cannot_reach_the_grader_python_is_told_apart(tmp_path, monkeypatch):
    from autograder.sandbox.accounts import _account_can_run_python, _ensure_account

    account = _ensure_account(f"{ACCOUNT_PREFIX}0")
    probe = _account_can_run_python.__wrapped__  # uncached: each case asks again
    assert probe(account.uid, account.gid) is None
    # The same interpreter behind a folder only root may enter (a venv under /root, 0700).
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    (hidden / "python").symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(hidden / "python"))
    why = probe(account.uid, account.gid)
    assert why is not None and "Permission" in why


@needs_account
def test_kernel_runs_as_an_unprivileged_account_of_its_own(tmp_path, monkeypatch, staged_data):
    from autograder.data.loaders import data_dir

    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-secret")
    (tmp_path / "data.csv").write_text("1,2\n")
    heldout = data_dir() / "heldout" / "mnist.npz"
    out = _in_kernel(f"HELDOUT = {str(heldout)!r}\n" + WHO, cwd=tmp_path)
    assert f"user {ACCOUNT_PREFIX}" in out and " 0 " not in out.split("\n")[0]
    assert "groups []" in out
    assert "no_new_privs 1 caps 0000000000000000" in out
    assert re.search(r"^home /\S+ True$", out, re.M)  # a home of its own, writable
    # A private copy of the notebook's folder, not the folder itself.
    assert "['data.csv']" in out and f"cwd {tmp_path}" not in out
    assert "core (0, 0)" in out
    assert "token None None" in out  # the grader's secrets and whereabouts stay out
    public = re.search(r"^public \(3000, 28, 28\) (\S+)$", out, re.M)
    assert public and public.group(1) != str(data_dir())  # a read-only copy of public/
    assert f"no access {heldout} PermissionError" in out
    assert "read " not in out


@needs_account
def test_process_limit_bounds_a_fork_bomb():
    code = textwrap.dedent(
        """
        import subprocess
        children = []
        try:
            while len(children) < 500:
                children.append(subprocess.Popen(["sleep", "30"]))
        except OSError as exc:
            print("stopped after", len(children), exc)
        for child in children:
            child.kill()
            child.wait()
        """
    )
    out = _in_kernel(code, limits=Limits(processes=40))
    assert "stopped after" in out and "Resource temporarily unavailable" in out
    assert int(out.split("stopped after")[1].split()[0]) < 40


def test_file_size_limit_stops_a_disk_flood(tmp_path):
    code = textwrap.dedent(
        """
        try:
            with open("flood.bin", "wb") as f:
                for _ in range(4):
                    f.write(bytes(2**20))
            print("wrote 4 MiB")
        except OSError as exc:
            print("stopped:", exc)
        """
    )
    out = _in_kernel(code, limits=Limits(file_size_mb=1), cwd=tmp_path)
    assert "stopped: [Errno 27] File too large" in out


@pytest.mark.skipif(not (SEPARATE or ISOLATED), reason="no PID namespace, no account here")
def test_nothing_the_kernel_started_outlives_it():
    # A command line nothing else on the machine runs: another "sleep" (a shell's, say)
    # must not be taken for the kernel's.
    daemon = ["sleep", "300.25"]
    code = textwrap.dedent(
        f"""
        import subprocess
        # a daemon of its own session: out of the kernel's process group
        p = subprocess.Popen({daemon!r}, start_new_session=True)
        print("daemon", p.pid)
        """
    )

    def the_daemon(p: psutil.Process) -> bool:
        try:
            return p.cmdline() == daemon
        except psutil.Error:
            return False

    assert "daemon" in _in_kernel(code)  # it was started
    deadline = time.monotonic() + 10
    left = [1]
    while left and time.monotonic() < deadline:
        left = [p for p in psutil.process_iter() if the_daemon(p) and not _gone(p)]
        time.sleep(0.1)
    assert not left


@needs_account
def test_kernels_at_the_same_time_get_accounts_of_their_own(tmp_path):
    first, second = KernelSandbox(), KernelSandbox()
    try:
        assert first.account is not None and second.account is not None
        assert first.account.uid != second.account.uid
        # The grader's folder, handed to the first kernel's account, then given back.
        artifacts = tmp_path / "artifacts"
        artifacts.mkdir()
        first.grant(artifacts)
        assert artifacts.stat().st_uid == first.account.uid
        uid, gid = first.account.uid, first.account.gid
        subprocess.run(
            ["sh", "-c", "echo {} > model.keras; ln -s /etc/shadow capture.json"],
            cwd=artifacts,
            user=uid,
            group=gid,
            extra_groups=[],
            check=True,
        )
    finally:
        first.release()
        second.release()
    assert not first.root.exists() and not second.root.exists()
    assert sorted(p.name for p in artifacts.iterdir()) == ["model.keras"]  # no links left
    assert (artifacts / "model.keras").stat().st_uid == os.geteuid()
    again = KernelSandbox()  # a released account is reused
    try:
        assert again.account is not None and again.account.uid in {uid, second.account.uid}
    finally:
        again.release()


def test_a_folder_others_can_reach_is_closed_to_them():
    parent = Path(tempfile.mkdtemp(prefix="sbx-open-", dir="/tmp"))
    try:
        parent.chmod(0o755)
        course = parent / "course"
        course.mkdir(mode=0o755)
        course.chmod(0o755)
        assert close_to_others([course]) == [course]
        assert course.stat().st_mode & 0o777 == 0o750
        assert close_to_others([course]) == []  # once is enough
        parent.chmod(0o700)
        inner = parent / "other"
        inner.mkdir(mode=0o755)
        assert close_to_others([inner]) == []  # out of reach already: left alone
    finally:
        shutil.rmtree(parent)


def test_output_beyond_the_limit_is_dropped_with_a_note(tmp_path):
    nb = _run(
        tmp_path,
        "for _ in range(6):\n    print('x' * 2**20, flush=True)",
        "print('after')",
        "raise ValueError('still shown')",
    )
    note = "output limit exceeded: the notebook printed more than 4 MiB"
    assert len(gh.shown(nb.cells[0])) < 4.5 * 2**20 and note in gh.shown(nb.cells[0])
    assert "after" not in gh.shown(nb.cells[1]) and note in gh.shown(nb.cells[1])
    assert "still shown" in gh.shown(nb.cells[2])  # errors are kept: nbgrader scores them


def test_a_kernel_replies_without_pausing_and_no_output_is_lost(tmp_path):
    """A graded kernel skips ipykernel's pause before each execute reply (kept for clients
    that stop reading a cell's outputs at its reply): nbclient reads them until the kernel
    is idle, so the last lines a cell prints, unflushed, still arrive, in order."""
    nb = _run(
        tmp_path,
        "print(get_ipython().kernel._execute_sleep)",
        "for i in range(3000):\n    print(i)\nprint('last', end='')",
    )
    assert gh.shown(nb.cells[0]).strip() == "0.0"
    assert gh.shown(nb.cells[1]).rstrip("\n") == "\n".join(map(str, range(3000))) + "\nlast"


def test_a_kernel_that_exits_says_so(tmp_path):
    nb = _run(tmp_path, "import os\nos._exit(3)", "print('after')")
    reason = "the kernel died (exit code 3): the notebook ended its own Python process"
    for cell in nb.cells:
        assert "KernelStopped" in gh.shown(cell) and reason in gh.shown(cell)


# --- the spare kernel of a batch worker -----------------------------------------------------


def test_a_spare_kernel_runs_the_next_notebook_in_its_own_folder(tmp_path, socket_dir, monkeypatch):
    from autograder.sandbox import spare as spares
    from autograder.sandbox.kernel import kernel_pid

    first, second = tmp_path / "first", tmp_path / "second"
    for folder, text in ((first, "one"), (second, "two")):
        folder.mkdir()
        (folder / "data.txt").write_text(text)
    show = "import os\nprint(open('data.txt').read(), sorted(os.listdir('.')), os.getpid())"
    try:
        nb1 = _run(first, show, spare_kernel=True)
        assert len(spares._SPARE) == 1  # started as the first one ended
        spare_pid = kernel_pid(spares._SPARE[0].km)
        assert psutil.pid_exists(spare_pid)
        nb2 = _run(second, show, spare_kernel=True)
        out1, out2 = gh.shown(nb1.cells[0]), gh.shown(nb2.cells[0])
        assert out1.startswith("one ['data.txt']")
        assert out2.startswith("two ['data.txt']")  # its own files, none of the first's
        assert not psutil.pid_exists(spare_pid)  # used, then shut down like any kernel
        # A spare started under other limits is not used (its OS limits were set at its
        # start): stopped, and the notebook gets a kernel of its own.
        stopped = []
        stop = spares._stop
        monkeypatch.setattr(spares, "_stop", lambda km, box: (stopped.append(km), stop(km, box)))
        spare = spares._SPARE[0]
        nb3 = _run(second, show, spare_kernel=True, memory_limit_mb=700)
        assert stopped == [spare.km]
        assert gh.shown(nb3.cells[0]).startswith("two ['data.txt']")
        assert spares._SPARE[0].key[0].memory_mb == 700
    finally:
        spares.discard_spare_kernel()
    assert spares._SPARE == []
    assert list(socket_dir.iterdir()) == []  # every kernel's folder is gone


def test_memory_cgroup_counts_memory_backed_files():
    """The hard cap: memory in a memfd is not resident memory, but the cgroup counts it."""
    from autograder.sandbox.cgroup import KernelCgroup, cgroup_unavailable

    group = KernelCgroup.create("test-memfd", memory_mb=200, processes=50)
    if group is None:
        pytest.skip(f"no cgroup for kernels here: {cgroup_unavailable() or 'not root'}")
    try:
        code = textwrap.dedent(
            f"""
            import os
            for procs in {group.procs_files!r}:
                with open(procs, "w") as f:
                    f.write(str(os.getpid()))
            cache = os.memfd_create("cache")
            for _ in range(100):
                os.write(cache, bytes(8 * 2**20))
            print("kept 800 MiB")
            """
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == -signal.SIGKILL and "kept" not in proc.stdout
        assert group.oom_kills() >= 1
        assert group.peak_mb() == pytest.approx(200, abs=1)
    finally:
        assert group.remove()
    assert not any(folder.exists() for folder in group.folders)


def test_cgroups_left_by_a_killed_grader_are_removed():
    from autograder.sandbox.cgroup import KernelCgroup, cgroup_unavailable

    left = KernelCgroup.create("slot-test-left", memory_mb=100, processes=10)
    if left is None:
        pytest.skip(f"no cgroup for kernels here: {cgroup_unavailable() or 'not root'}")
    sleeper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import os, time\nfor p in {left.procs_files!r}:\n"
            "    open(p, 'w').write(str(os.getpid()))\ntime.sleep(600)",
        ]
    )
    time.sleep(1)
    assert KernelCgroup.remove_stale("slot-test-")
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    assert not any(folder.exists() for folder in left.folders)


def test_a_free_slot_left_by_a_grader_killed_in_another_cgroup_is_cleaned():
    """A grader killed while it ran in another cgroup (another login session, another
    service) left a slot's kernel behind: a process, a kernel folder, a file, and groups
    under that other cgroup. The next batch's sweep removes them all, though this grader
    neither takes that slot nor sees those groups from its own."""
    from autograder.sandbox.accounts import clean_free_slots

    with gh.leftovers_of_a_killed_grader() as left:
        clean_free_slots()
        assert left.sleeper.wait(timeout=10) == -signal.SIGKILL
        assert left.remaining() == []


def test_a_slot_let_go_clean_is_taken_without_cleaning_and_any_other_is_cleaned():
    """A kernel's sandbox cleans its account when it ends and lets the slot go marked
    clean (this boot): the next to take it skips cleaning it again. A slot let go without
    that mark (its grader killed while it held it, say), or marked in another boot, is
    cleaned before use; the mark says "in use" while a slot is held."""
    from unittest import mock

    from autograder.sandbox import accounts
    from autograder.sandbox.files import SLOT_DIR
    from autograder.sandbox.kernel import KernelSandbox

    box = KernelSandbox()
    if box.account is None:
        box.release()
        pytest.skip("no sandbox accounts here (not root)")
    assert box._slot is not None
    lock = SLOT_DIR / f"slot-{box._slot.number}.lock"
    assert lock.read_text() == "in use\n"
    box.release()
    assert lock.read_text() == accounts._clean_mark() + "\n" and "clean " in lock.read_text()
    cleaned = []
    real_clean = accounts.clean_account
    with mock.patch.object(
        accounts, "clean_account", lambda *a, **k: cleaned.append(a) or real_clean(*a, **k)
    ):
        slot = accounts.acquire_slot()  # the lowest free slot: the one just let go
        assert slot is not None and cleaned == [] and lock.read_text() == "in use\n"
        slot.release()  # not marked clean: as a killed grader's would be
        slot = accounts.acquire_slot()
        assert slot is not None and len(cleaned) == 1
        slot.release(clean=True)
        lock.write_text("clean another-boot\n")
        slot = accounts.acquire_slot()
        assert slot is not None and len(cleaned) == 2
        slot.release(clean=True)


def test_an_account_killed_before_its_clean_up_is_cleaned_whole_if_one_lives_on():
    """Cleaning an account its caller has just killed (a kernel's release) does not kill
    again, but a process of it found alive and not dying (one started since) has the
    whole clean-up done again: it is killed, not waited for in vain, and the account's
    files go too."""
    from autograder.sandbox.accounts import acquire_slot, clean_account

    slot = acquire_slot()
    if slot is None:
        pytest.skip("no sandbox accounts here (not root)")
    account = slot.account
    stray = Path(tempfile.gettempdir()) / f"made-after-the-kill-{slot.number}"
    sleeper = subprocess.Popen(["sleep", "600"], user=account.uid, group=account.gid, cwd="/")
    try:
        stray.write_text("a copy of a submission")
        os.chown(stray, account.uid, account.gid)
        assert clean_account(account, slot.number, killed=True) is None
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
        assert not stray.exists()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        stray.unlink(missing_ok=True)
        slot.release()


def test_a_process_already_sent_sigkill_needs_no_other_kill_but_is_waited_for():
    """Killing an account's processes starts no killer for a process with a SIGKILL
    pending already (a kernel killed a moment before, not yet scheduled to die): it never
    runs its own code again. Any other pending signal does not count; and for the waits
    that need the processes gone (cleaning the account), it still counts as running."""
    from autograder.sandbox.accounts import _running, _status_fields

    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        real = _status_fields(Path(f"/proc/{sleeper.pid}/status").read_bytes())
    finally:
        sleeper.kill()
        sleeper.wait()
    assert real[b"ShdPnd"] == real[b"SigPnd"] == b"0" * 16, real
    kill, interrupt = f"{1 << (signal.SIGKILL - 1):016x}", f"{1 << (signal.SIGINT - 1):016x}"
    assert _running(real, dying=False)
    for field in (b"ShdPnd", b"SigPnd"):
        assert not _running({**real, field: kill.encode()}, dying=False)
        assert _running({**real, field: kill.encode()})
        assert _running({**real, field: interrupt.encode()}, dying=False)
    zombie = {**real, b"State": b"Z (zombie)"}
    assert not _running(zombie) and _running({**zombie, b"Threads": b"2"})


def test_a_process_whose_first_thread_ended_is_still_found_and_killed():
    """A process of a sandbox account whose first thread has ended while another runs on
    shows in /proc as a zombie: it still runs as the account, and cleaning the account
    must kill it, not take it for dead and leave it to the next kernel on that account."""
    from autograder.sandbox.accounts import acquire_slot, clean_account

    slot = acquire_slot()
    if slot is None:
        pytest.skip("no sandbox accounts here (not root)")
    account = slot.account
    proc = subprocess.Popen(
        [sys.executable, "-c", FIRST_THREAD_ENDS],
        user=account.uid,
        group=account.gid,
        cwd="/",
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 10
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "its first thread did not end"
            time.sleep(0.01)
        assert psutil.Process(proc.pid).num_threads() == 2  # the other thread runs on
        assert clean_account(account, slot.number) is None
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        slot.release()


SPIN = """
import os, sys, time
groups, processes, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
for procs in groups.split(",") if groups != "-" else []:
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
for _ in range(processes - 1):
    if os.fork() == 0:
        break
end = time.monotonic() + seconds
while time.monotonic() < end:
    pass
os.write(1, f"{time.process_time()}\\n".encode())  # one write: lines never interleave
"""


def _one_share_beside(many: str, one: str, processes: int, ones: int = 1) -> float:
    """The cores' worth of CPU one busy process (in group ``one``; of ``ones`` such, their
    mean) gets beside ``processes`` busy ones (in group ``many``); "-": no group. All in
    this session, so that the scheduler's per-session groups (autogroup) do not separate
    them."""
    crowd = subprocess.Popen(
        [sys.executable, "-c", SPIN, many, str(processes), "5"],
        stdout=subprocess.DEVNULL,
        process_group=0,
    )
    try:
        time.sleep(0.5)  # all of them busy
        alone = subprocess.run(
            [sys.executable, "-c", SPIN, one, str(ones), "2"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return statistics.mean(float(line) for line in alone.stdout.split()) / 2
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(crowd.pid, signal.SIGKILL)
        crowd.wait()


def test_a_kernel_that_keeps_many_processors_busy_takes_one_share():
    """Each kernel's cpu cgroup: a notebook that keeps twice the machine's cores busy gets
    one group's share, and the notebook beside it keeps its own (a core, on two or more);
    without the groups, the same processes leave it well under that."""
    from autograder.sandbox.cgroup import KernelCgroup, cgroup_unavailable

    cores = os.cpu_count() or 1
    fair = min(1.0, cores / 2)
    without = _one_share_beside("-", "-", 2 * cores)
    assert without < 0.7 * fair, f"the scheduler shares per process here: {without:.2f}"
    groups = [KernelCgroup.create(f"test-cpu-{n}", memory_mb=500, processes=50) for n in (1, 2)]
    try:
        if None in groups:
            pytest.skip(f"no cgroup for kernels here: {cgroup_unavailable() or 'not root'}")
        many, one = (",".join(g.procs_files) for g in groups if g is not None)
        if not all(g is not None and g.cpu for g in groups):
            pytest.skip("no cpu cgroup for kernels here (the controller is not available)")
        within = _one_share_beside(many, one, 2 * cores)
    finally:
        for group in groups:
            if group is not None:
                assert group.remove()
    assert within > 0.85 * fair, f"{within:.2f} of a core with the groups, {without:.2f} without"


def test_the_graders_own_steps_go_before_busy_kernels():
    """A kernel's cpu group weighs KERNEL_CPU_WEIGHT of a grader process: grader processes
    (capturing, evaluating, recording; one per core) beside a kernel that keeps twice the
    cores busy leave that kernel clearly less of the cores than they leave a group of a
    grader process's weight."""
    from autograder.sandbox.cgroup import KernelCgroup, cgroup_unavailable
    from autograder.settings import KERNEL_CPU_WEIGHT

    cores = os.cpu_count() or 1
    weights = {"kernel": KERNEL_CPU_WEIGHT, "equal": 1.0}
    groups = {
        name: KernelCgroup.create(
            f"test-weight-{name}", memory_mb=500, processes=50, cpu_weight=weight
        )
        for name, weight in weights.items()
    }
    try:
        if None in groups.values():
            pytest.skip(f"no cgroup for kernels here: {cgroup_unavailable() or 'not root'}")
        if not all(g is not None and g.cpu for g in groups.values()):
            pytest.skip("no cpu cgroup for kernels here (the controller is not available)")
        for name, group in groups.items():
            assert group is not None
            file, base = ("cpu.shares", 1024) if group.version == 1 else ("cpu.weight", 100)
            written = (group.folders[-1] / file).read_text()
            assert int(written) == round(base * weights[name]), (name, written)
        share = {
            name: _one_share_beside(",".join(g.procs_files), "-", 2 * cores, ones=cores)
            for name, g in groups.items()
            if g is not None
        }
    finally:
        for group in groups.values():
            if group is not None:
                assert group.remove()
    # The cores are saturated, so what a grader process does not get, the kernel's group
    # takes. That take is compared, not the graders' shares: how a group's weight is split
    # among cores differs by cgroup version and hierarchy (one machine measured 0.81 against
    # 0.50 for the graders, CI's 0.85 against 0.67), while the kernel's take is two to
    # three times smaller with a quarter of the weight in each (0.19 to 0.50, 0.15 to 0.33).
    taken = {name: 1 - s for name, s in share.items()}
    assert share["kernel"] > 0.7, share
    assert taken["kernel"] < 0.6 * taken["equal"], share


def test_evaluation_cgroups_of_a_killed_evaluator_are_removed_and_no_others():
    """An evaluator server killed while its next evaluation's child waited leaves that
    child's cgroup (named after the server's pid); the next batch's clean-up removes it,
    and never the group of a server still running."""
    from autograder.sandbox.cgroup import EVALUATION_CGROUP, PREFIX, KernelCgroup
    from autograder.sandbox.files import remove_stale_temps

    dead_pid = gh.pid_of_a_process_gone()
    names = {
        "dead": f"{EVALUATION_CGROUP}{dead_pid}-0",
        "live": f"{EVALUATION_CGROUP}{os.getpid()}-0",
    }
    groups = {k: KernelCgroup.create(n, memory_mb=100, processes=10) for k, n in names.items()}
    try:
        if None in groups.values():
            pytest.skip("no cgroup for kernels here (not root, or no controller)")
        remove_stale_temps()
        assert not any(f.exists() for f in groups["dead"].folders), groups["dead"].folders
        assert all(f.is_dir() for f in groups["live"].folders), groups["live"].folders
        assert all(f.name.startswith(PREFIX + EVALUATION_CGROUP) for f in groups["live"].folders)
    finally:
        for group in groups.values():
            if group is not None:
                assert group.remove()


def test_evaluation_cgroups_a_killed_evaluator_left_in_another_group_are_removed():
    """An evaluator server killed while it ran in another cgroup (another session or
    service) left its child's group, and the child in it, under that parent: the next
    clean-up finds it there, kills the child and removes the group; a group there whose
    server still runs stays."""
    from autograder.sandbox.cgroup import EVALUATION_CGROUP, PREFIX
    from autograder.sandbox.files import remove_stale_temps

    dead_name = f"{PREFIX}{EVALUATION_CGROUP}{gh.pid_of_a_process_gone()}-0"
    live_name = f"{PREFIX}{EVALUATION_CGROUP}{os.getpid()}-0"
    with (
        gh.group_in_another_session(live_name) as live,
        gh.group_in_another_session(dead_name) as dead,
    ):
        child = subprocess.Popen(["sleep", "600"])
        try:
            (dead / "cgroup.procs").write_text(str(child.pid))
            remove_stale_temps()
            assert not dead.exists()
            assert child.wait(timeout=10) == -signal.SIGKILL
            assert live.is_dir()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


CPU_WEIGHT_SEEN = """
import pathlib
for line in open("/proc/self/cgroup"):
    _, ctl, path = line.strip().split(":", 2)
    if "cpu" in ctl.split(","):
        print("v1", pathlib.Path("/sys/fs/cgroup/" + ctl + path, "cpu.shares").read_text())
    elif ctl == "" and pathlib.Path("/sys/fs/cgroup" + path, "cpu.weight").exists():
        print("v2", pathlib.Path("/sys/fs/cgroup" + path, "cpu.weight").read_text())
"""


def test_a_students_cells_run_at_the_kernel_cpu_weight(tmp_path):
    """GraderExecute lowers the kernel's cpu group to KERNEL_CPU_WEIGHT for the student's
    cells (as the cell itself reads it from its own cgroup)."""
    from autograder.settings import KERNEL_CPU_WEIGHT

    out, record = _run_recorded(tmp_path, CPU_WEIGHT_SEEN)
    if not record.get("cpu_cgroup"):
        pytest.skip("no cpu cgroup for kernels here")
    version, value = out.split()[:2]
    assert int(value) == round((1024 if version == "v1" else 100) * KERNEL_CPU_WEIGHT), out


# --- kernels forked from the fork server ----------------------------------------------------

FORKED_FIRST = """
import os, sys
import numpy as np, keras, tensorflow as tf
keras.LEFT_BY_FIRST = "a secret"
sys.modules["left_by_first"] = sys
os.environ["LEFT_BY_FIRST"] = "1"
open(os.path.join(os.environ["HOME"], "left-by-first"), "w").write("x")
open("/tmp/left-by-first", "w").write("x")
print(float(tf.reduce_sum(tf.ones((3, 3)))))  # an op: TensorFlow's thread pools, here only
print("draw", np.random.randint(1 << 30), os.getuid())
"""

FORKED_NEXT = """
import os, sys
import numpy as np, keras
left = [
    hasattr(keras, "LEFT_BY_FIRST"),
    "left_by_first" in sys.modules,
    "LEFT_BY_FIRST" in os.environ,
    os.path.exists(os.path.join(os.environ["HOME"], "left-by-first")),
    os.path.exists("/tmp/left-by-first"),
]
print("left", left)
print("draw", np.random.randint(1 << 30), os.getuid())
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
model.compile("adam", "sparse_categorical_crossentropy")
model.fit(np.random.rand(64, 4), np.random.randint(0, 2, 64), epochs=1, verbose=0)
model.save("forked.keras")
print("saved", os.path.getsize("forked.keras") > 0)
import gc, weakref
class Node: pass
node = Node(); node.me = node; gone = weakref.ref(node); del node
gc.collect()
print("gc", gc.get_freeze_count() > 10_000, gone() is None)
"""


def _run_recorded(folder: Path, source: str) -> tuple[str, dict]:
    """What one notebook printed, and the record of its sandbox."""
    nb = new_notebook(cells=[new_code_cell(source)])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    resources = {
        "nbgrader": {"assignment": "not-a-lab"},
        "metadata": {"path": str(folder)},
        "autograder": {},
    }
    nb, resources = GraderExecute().preprocess(nb, resources)
    return gh.shown(nb.cells[0]), resources["autograder"]["sandbox"]


def test_forked_kernels_share_nothing_from_one_notebook_to_the_next(tmp_path, monkeypatch):
    from autograder.sandbox import forked

    if not forked.forking_wanted():
        pytest.skip("kernels are not forked here (no pidfd_open, or AUTOGRADER_FORK_KERNELS)")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    out1, record1 = _run_recorded(first, FORKED_FIRST)
    server = forked._SERVERS[0].process.pid
    out2, record2 = _run_recorded(second, FORKED_NEXT)
    assert record1["forked"] and record2["forked"], (out1, out2)
    assert forked._SERVERS[0].process.pid == server  # both forked from the same server
    assert "9.0" in out1, out1  # TensorFlow ran an op in the first
    assert "left [False, False, False, False, False]" in out2, out2
    assert "saved True" in out2, out2  # and trains and saves in the next
    # The server's imports are frozen: no collection in a kernel passes over them (or
    # copies their pages); what the notebook makes is collected as usual.
    assert "gc True True" in out2, out2
    draws = [re.search(r"draw (\d+) (\d+)", out) for out in (out1, out2)]
    assert draws[0] and draws[1]
    assert draws[0][1] != draws[1][1]  # a random state of each kernel's own
    if SEPARATE:
        assert record1["separate_user"] and record2["separate_user"]
        assert int(draws[0][2]) != 0 and int(draws[1][2]) != 0  # not the server's root
    # The server holds no TensorFlow thread pool and no student's code: it is the same
    # single process it was, with no kernel of its own left.
    info = forked.fork_server_info()
    assert info is not None and info["modules"][:3] == ["numpy", "tensorflow", "keras"]
    left = [p for p in psutil.Process(server).children(recursive=True) if p.is_running()]
    assert all(p.status() == psutil.STATUS_ZOMBIE for p in left), left


# Speaks the fork server's protocol without its imports: ready after a moment, then one
# empty answer per request until its client's end closes.
_STAND_IN_SERVER = """
import json, socket, sys, time
sock = socket.socket(fileno=int(sys.argv[1]))
time.sleep(0.3)
sock.send(json.dumps({"ready": {"modules": []}}).encode())
while sock.recv(65536):
    sock.send(b"{}")
"""


def _claim_and_use(index: int, env: dict[str, str], answers: object) -> None:
    """A batch worker, forked after the servers were started ahead: it claims one, and its
    first kernel asks for a server for ``env``."""
    from autograder.sandbox import forked

    forked.claim_started_ahead(index)
    server = forked._server(env)
    assert server is not None
    answers.put((index, server.process.pid, bool(server.info.get("started_ahead"))))  # type: ignore[attr-defined]
    forked.stop_fork_server()


def test_fork_servers_started_ahead_serve_one_worker_each_and_none_is_left(tmp_path, monkeypatch):
    import multiprocessing

    from autograder.sandbox import forked

    if not forked.forking_wanted():
        pytest.skip("kernels are not forked here (no pidfd_open, or AUTOGRADER_FORK_KERNELS)")
    script = tmp_path / "server.py"
    script.write_text(_STAND_IN_SERVER)
    monkeypatch.setattr(forked, "_SERVER_SCRIPT", script)
    env = {"PATH": os.environ["PATH"], "TF_NUM_INTRAOP_THREADS": "1"}
    forked.stop_fork_server()
    own = forked._server({**env, "OWN": "1"})  # this process's own, which workers inherit
    assert own is not None
    assert forked.start_servers_ahead(env, 3) == 3
    ahead = [server.process.pid for server in forked._AHEAD]
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    # Worker 0's kernels have the environment the servers were started for; worker 1's
    # another one (its threads). Nobody claims the third.
    workers = [
        context.Process(target=_claim_and_use, args=(0, env, answers)),
        context.Process(
            target=_claim_and_use, args=(1, {**env, "TF_NUM_INTRAOP_THREADS": "2"}, answers)
        ),
    ]
    for worker in workers:
        worker.start()
    forked.hand_over_started_ahead()
    got = sorted(answers.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(60)
    forked.reap_started_ahead()
    assert [w.exitcode for w in workers] == [0, 0]
    assert got[0] == (0, ahead[0], True)  # adopted
    assert got[1][0] == 1 and got[1][1] not in ahead and got[1][2] is False  # its own
    # Every server ended and was reaped: the one adopted, the one that did not fit (stopped
    # by its worker), the one nobody claimed; the starter holds none of their ends.
    assert not any(psutil.pid_exists(pid) for pid in ahead)
    zombies = [c for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE]
    assert not zombies, zombies
    assert not forked._AHEAD and not forked._HANDED and not forked._CLAIMED
    # The workers left this process's own server alone (their copies closed, nothing sent).
    assert own.alive() and [own] == forked._SERVERS
    forked.stop_fork_server()
    assert not psutil.pid_exists(own.process.pid)


def test_a_kernels_environment_is_computed_without_a_loop_for_forked_workers(monkeypatch):
    import jupyter_core.utils

    from autograder.sandbox.kernel import kernel_environment

    monkeypatch.setenv("COURSE_API_TOKEN", "not for students")
    token = jupyter_core.utils._loop.set(None)  # as in a coordinator: no loop yet
    try:
        env = kernel_environment()
        # No event loop left for the batch's workers, forked next, to inherit (and share).
        assert jupyter_core.utils._loop.get() is None
    finally:
        jupyter_core.utils._loop.reset(token)
    # As a started kernel's: the grader's secrets scrubbed, its own variables kept.
    assert "COURSE_API_TOKEN" not in env and env["PATH"] == os.environ["PATH"]


def test_a_fork_servers_home_left_by_a_killed_grader_is_removed(tmp_path):
    from autograder.sandbox.files import remove_stale_temps

    script = tmp_path / "server.py"
    script.write_text(_STAND_IN_SERVER)
    # A grader killed while the server it started imports: the server's home stays.
    code = textwrap.dedent(
        """
        import os, sys
        from pathlib import Path
        from autograder.sandbox import forked
        forked._SERVER_SCRIPT = Path(sys.argv[1])
        server = forked.ForkServer({"PATH": os.environ["PATH"]}, wait=False)
        print(server.home, flush=True)
        os._exit(9)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(script)], capture_output=True, text=True, check=False
    )
    home = Path(out.stdout.strip())
    assert out.returncode == 9 and home.is_dir(), out.stderr
    remove_stale_temps()
    assert not home.exists()


# The environment once the lab's imports ran (TensorFlow's and debugpy's set variables).
ENVIRONMENT_AFTER_IMPORTS = """
import json, os
import numpy, tensorflow, keras
print('ran', 6 * 7)
print('env', json.dumps(dict(os.environ)))
"""
# What those imports set (TensorFlow's, debugpy's), unset in this process first: had
# TensorFlow been imported here already, the kernels would inherit them either way.
SET_BY_IMPORTS = (
    "TF2_BEHAVIOR",
    "KMP_INIT_AT_FORK",
    "KMP_DUPLICATE_LIB_OK",
    "TPU_ML_PLATFORM",
    "TPU_ML_PLATFORM_VERSION",
    "ENABLE_RUNTIME_UPTIME_TELEMETRY",
    "HDF5_PLUGIN_PATH",
    "PYDEVD_USE_FRAME_EVAL",
)


def _environment_shown(out: str) -> dict[str, str]:
    env = json.loads(out.split("env ", 1)[1].strip().splitlines()[0])
    # each kernel's own folders, and the switch this test turns
    return {k: v for k, v in env.items() if k not in {"HOME", "TMPDIR", "AUTOGRADER_FORK_KERNELS"}}


def test_kernels_are_started_anew_where_forking_is_off_or_fails(tmp_path, monkeypatch, caplog):
    from autograder.sandbox import forked, isolation

    folder = tmp_path / "nb"
    folder.mkdir()
    for key in SET_BY_IMPORTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AUTOGRADER_FORK_KERNELS", "off")
    out, record = _run_recorded(folder, ENVIRONMENT_AFTER_IMPORTS)
    assert "ran 42" in out and record["forked"] is False
    monkeypatch.delenv("AUTOGRADER_FORK_KERNELS")
    if forked.forking_wanted():
        # A forked kernel's environment is a started one's: the variables the server's
        # imports set are set in the kernel as its own imports would have set them.
        forked_out, forked_record = _run_recorded(folder, ENVIRONMENT_AFTER_IMPORTS)
        assert forked_record["forked"] is True
        started_env, forked_env = _environment_shown(out), _environment_shown(forked_out)
        assert started_env.get("TF2_BEHAVIOR") == "1", started_env  # set by the import
        assert forked_env == started_env
    # A server that cannot start (here: it exits at once): a warning, and the kernel starts.
    forked.stop_fork_server()
    broken = tmp_path / "broken_server.py"
    broken.write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(forked, "_SERVER_SCRIPT", broken)
    monkeypatch.setattr(isolation, "_WARNED", set())
    out, record = _run_recorded(folder, "print('ran', 6 * 7)")
    assert "ran 42" in out and record["forked"] is False
    assert "kernels are started, not forked: the fork server did not start" in caplog.text
    forked.stop_fork_server()
