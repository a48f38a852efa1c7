"""A real Dask cluster on loopback: ``dask scheduler`` and ``dask worker`` started as
separate processes over TCP, as a cluster's machines would run them, stopped after."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["tcp_cluster"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tcp_cluster(workers: int, env: Mapping[str, str], log: Path) -> Iterator[str]:
    """A scheduler and ``workers`` single-threaded workers; yields the scheduler's address."""
    from dask.distributed import Client

    dask = str(Path(sys.executable).parent / "dask")
    address = f"tcp://127.0.0.1:{_free_port()}"
    # Their scratch folders beside the log, not Dask's default in /tmp (which would stay).
    full_env = {**os.environ, **env, "DASK_TEMPORARY_DIRECTORY": str(log.parent / "dask")}
    out = log.open("ab")
    common = {
        "env": full_env,
        "stdout": out,
        "stderr": subprocess.STDOUT,
        "start_new_session": True,
    }
    port = address.rsplit(":", 1)[1]
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
            **common,  # type: ignore[arg-type]
        )
    ]
    try:
        for i in range(workers):
            cmd = [dask, "worker", address, "--nworkers", "1", "--nthreads", "1"]
            cmd += ["--no-dashboard", "--memory-limit", "0", "--name", f"worker-{i}"]
            procs.append(subprocess.Popen(cmd, **common))  # type: ignore[arg-type]
        deadline = time.monotonic() + 120
        while True:
            try:
                with Client(address, timeout=10) as client:
                    if len(client.scheduler_info()["workers"]) >= workers:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workers} Dask workers did not join {address}")
            time.sleep(1)
        yield address
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.close()
