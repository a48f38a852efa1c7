"""The fork server: a process that has imported numpy, TensorFlow and Keras once, from
which each student's kernel is forked instead of started (run as a script by
:mod:`autograder.sandbox.forked`, which is its only client).

A fresh kernel spends 3-6 s of CPU importing TensorFlow in the notebook's first cell; a
forked one finds it imported. What the server holds is what those imports hold and nothing
else: it never runs a TensorFlow op (no TensorFlow thread pool, no device), never imports
the grader, and never sees a notebook; it is started with the kernel's own environment
(secrets scrubbed) and a home of its own. Each fork is then sandboxed exactly as a started
kernel (:mod:`autograder.sandbox.launcher`: namespaces, cgroups, masks, limits, account) and
runs ipykernel in place of ``python -m ipykernel_launcher``.

Protocol, over a SOCK_SEQPACKET socket inherited as file descriptor ``argv[1]``: the server
sends ``{"ready": ...}`` once imported (or ``{"error": ...}``); then each request is one
JSON message, ``{"op": "spawn", ...}`` (with the watch pipe's read end as an attached file
descriptor) answered by ``{"pid": N}`` with a pidfd attached, or ``{"op": "status",
"pid": N}`` answered by ``{"status": code or null}``, or ``{"op": "module"}`` (with two
pipe ends attached) answered as a spawn: a module of the grader's run on those pipes (its
evaluation server, so that a worker imports TensorFlow once, not twice; the module, its
environment and arguments come over its own pipe, and what it loads is loaded after the
fork: none of it is ever in this process). The server exits when the socket closes: its
client, the grader, is gone.

OpenBLAS (numpy's, and TensorFlow's copy) starts its worker threads at import; it stops
them before each fork and starts them again in the child (its own pthread_atfork
handlers), so the server is single-threaded in effect when it forks.
"""

import atexit
import contextlib
import gc
import importlib.util
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["main"]

# Run as a script: its folder (this package) is not the kernel's business.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

_MAX_MESSAGE = 1 << 20
# ipykernel.debugger: every kernel imports it (debugpy, 0.05 s of CPU) as it starts; the
# rest, 0.01 s more, too (its shell's inspector, debugger, history database, event loop).
_PRELOADED = (
    "numpy",
    "tensorflow",
    "keras",
    "ipykernel.kernelapp",
    "ipykernel.debugger",
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.core.oinspect",
    "IPython.extensions.storemagic",
    "IPython.utils.wildcard",
    "sqlite3",
    "tornado.platform.asyncio",
)
# What those imports did to the environment (key: value before, value after; None: unset),
# which a started kernel's own imports do to its: TensorFlow's and debugpy's variables.
_SET_BY_IMPORTS: dict[str, tuple[str | None, str | None]] = {}


def _launcher() -> Any:
    """:mod:`autograder.sandbox.launcher` under a private name: the grader's package is
    not imported here (a student's ``autograder`` import must find it unimported)."""
    path = Path(__file__).with_name("launcher.py")
    spec = importlib.util.spec_from_file_location("_autograder_kernel_launcher", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _run_kernel(cmd: list[str], env: dict[str, str]) -> None:
    """Be ``cmd`` (``python -m ipykernel_launcher ARGS``) in this process; never returns."""
    code: Any = 0
    try:
        _take_environment(env)
        import ipykernel_launcher

        sys.argv = [ipykernel_launcher.__file__, *cmd[3:]]
        _as_fresh()
        from ipykernel.kernelapp import launch_new_instance

        launch_new_instance()
    except SystemExit as stop:
        code = stop.code
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()  # what a normal exit of the interpreter runs
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(_exit_status(code))


def _take_environment(env: dict[str, str]) -> None:
    """``env`` as the process's environment, with what the preloaded imports would have set
    in it, where it holds what they found here."""
    os.environ.clear()
    os.environ.update(env)
    for key, (before, after) in _SET_BY_IMPORTS.items():
        if os.environ.get(key) != before:
            continue  # this environment's own value: the imports' effect does not apply
        if after is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = after


def _exit_status(code: Any) -> int:
    """The status ``sys.exit(code)`` gives an interpreter: an int as is, None 0, else 1."""
    return code if isinstance(code, int) else (0 if code is None else 1)


def _run_module() -> None:
    """Be ``python -m MODULE ARGS`` in this process, with the module, arguments,
    environment, folder and ``sys.path`` of the first line of stdin; never returns."""
    import runpy

    setup = json.loads(sys.stdin.readline())
    _take_environment(setup["env"])
    os.chdir(setup["cwd"])
    sys.path[:] = setup["path"]
    sys.argv = [setup["module"], *setup["args"]]
    _as_fresh()
    code: Any = 0
    try:
        runpy.run_module(setup["module"], run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code
    os._exit(_exit_status(code))


def _as_fresh() -> None:
    """What a kernel started anew would differ in, where the imports cached the server's:
    a random state of its own, its own $TMPDIR, and keras' home under its own $HOME or
    $KERAS_HOME."""
    import tempfile

    import numpy

    numpy.random.seed()  # else every forked kernel draws the same "random" numbers
    tempfile.tempdir = None  # found again, from this kernel's environment
    config: Any = sys.modules.get("keras.src.backend.config")
    if config is not None:
        if "KERAS_HOME" in os.environ:
            config._KERAS_DIR = os.environ["KERAS_HOME"]
        else:
            base = os.path.expanduser("~")
            if not os.access(base, os.W_OK):
                base = "/tmp"
            config._KERAS_DIR = os.path.join(base, ".keras")


class _Server:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.launcher = _launcher()
        self.finished: dict[int, int] = {}
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *args: None)
        signal.set_wakeup_fd(self.wake_w)
        # What the imports left open, kept in every kernel (the libraries own them).
        self.baseline_fds = {int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2} - {
            sock.fileno(),
            self.wake_r,
            self.wake_w,
        }
        self.ready_threads = _threads()  # OpenBLAS's pools: stopped across fork by OpenBLAS

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(message).encode()
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.send(data)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.finished[pid] = os.waitstatus_to_exitcode(status)

    def serve(self) -> None:
        while True:
            ready, _, _ = select.select([self.sock.fileno(), self.wake_r], [], [])
            if self.wake_r in ready:
                os.read(self.wake_r, 4096)
                self.reap()
            if self.sock.fileno() not in ready:
                continue
            data, fds, _, _ = socket.recv_fds(self.sock, _MAX_MESSAGE, 4)
            if not data:
                return  # the grader is gone
            request = json.loads(data)
            self.reap()
            if request["op"] == "status":
                pid = int(request["pid"])
                self.send({"status": self.finished.pop(pid, None)})
            elif request["op"] == "spawn":
                self.spawn(request, fds[0] if fds else None)
            elif request["op"] == "module" and len(fds) == 2:
                self.module(fds[0], fds[1])
            for fd in fds:
                os.close(fd)

    def _refused(self) -> bool:
        if _threads() > self.ready_threads:
            # Something started threads since the imports (a TensorFlow op would): a child
            # forked now can hang on a lock one of them held (benchmarks/fork_tolerance.py).
            self.send({"error": f"{_threads()} threads, {self.ready_threads} when ready"})
            return True
        return False

    def _answer(self, pid: int) -> None:
        pidfd = os.pidfd_open(pid)
        try:
            self.send({"pid": pid}, [pidfd])
        finally:
            os.close(pidfd)

    def module(self, stdin: int, stdout: int) -> None:
        """Fork a child that runs a module of the grader's (its evaluation server) on the
        pipes ``stdin`` and ``stdout``. The module, its arguments, environment and folder
        come over ``stdin``, read by the child only: the server never holds the grader's
        environment, which a later kernel would inherit."""
        if self._refused():
            return
        pid = os.fork()
        if pid == 0:
            try:
                self._close_own((stdin, stdout))
                os.dup2(stdin, 0)
                os.dup2(stdout, 1)
                os.close(stdin)
                os.close(stdout)
                _run_module()
            except BaseException:
                traceback.print_exc()
            os._exit(127)
        self._answer(pid)

    def _close_own(self, keep: tuple[int, ...]) -> None:
        """In a child: close the server's socket and wake-up pipe, restore the signals it
        handles, and close whatever else it holds open (nothing but what imports opened)."""
        self.sock.close()
        signal.set_wakeup_fd(-1)
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in keep and fd not in self.baseline_fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def spawn(self, request: dict[str, Any], watch: int | None) -> None:
        if self._refused():
            return
        args = list(request["args"])
        if watch is not None:
            args[4] = str(watch)
        pid = os.fork()
        if pid == 0:
            self.child(request, args, watch)
        self._answer(pid)

    def child(self, request: dict[str, Any], args: list[str], watch: int | None) -> None:
        try:
            self._close_own(() if watch is None else (watch,))
            os.setsid()
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            self.launcher.enter_namespaces(list(request["flags"]))
            self.launcher.launch(args, start=_run_kernel)
        except BaseException:
            traceback.print_exc()
        os._exit(127)


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the grader's terminal is not ours
    started = time.monotonic()
    cpu = time.process_time()
    before = dict(os.environ)
    try:
        for module in _PRELOADED:
            __import__(module)
    except BaseException as exc:
        sock.send(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        return
    for key in before.keys() | os.environ.keys():
        if before.get(key) != os.environ.get(key):
            _SET_BY_IMPORTS[key] = (before.get(key), os.environ.get(key))
    # The imports' objects (some 400,000) frozen: no garbage collection in a kernel passes
    # over them (0.1 s or more each full one) or writes to their pages, which stay shared with
    # this process (Python's advice to a process that forks).
    gc.freeze()
    server = _Server(sock)
    server.send(
        {
            "ready": {
                "import_s": round(time.monotonic() - started, 3),
                "import_cpu_s": round(time.process_time() - cpu, 3),
                "threads": _threads(),
                "modules": list(_PRELOADED),
            }
        }
    )
    server.serve()
    os._exit(0)  # the grader is gone; TensorFlow's teardown would take a second


if __name__ == "__main__":
    main()
