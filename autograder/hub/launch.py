"""Starting the course's hub: :func:`start_hub` prepares the course (:mod:`.prepare`) and
starts JupyterHub, on loopback, under a supervisor (``autograder.hub.supervise``), so that
:func:`stop_hub` stops the hub and everything it started; :func:`wait_until_up` waits for it
to answer. These are the steps of the ``autograder hub`` command. The proxy is the one
``make setup`` installed from ``package-lock.json``: nothing is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from autograder.errors import ConfigError
from autograder.hub.config import installed_script
from autograder.hub.prepare import prepare_course
from autograder.hub.settings import load_settings
from autograder.settings import HUB_SETTINGS_ENV, PROJECT_DIR, PROXY_COMMAND_ENV

__all__ = [
    "HUB_GRACE_S",
    "hub_config_file",
    "proxy_command",
    "start_hub",
    "stop_hub",
    "wait_until_up",
]


def _project_root() -> Path:
    return PROJECT_DIR


def hub_config_file() -> Path:
    """The project's ``hub_config/jupyterhub_config.py``."""
    return _project_root() / "hub_config" / "jupyterhub_config.py"


def proxy_command() -> Path:
    """configurable-http-proxy as ``make setup`` installed it (``npm ci``, exact versions
    from the project's ``package-lock.json``); a clear error when it is not there."""
    exe = _project_root() / "node_modules" / ".bin" / "configurable-http-proxy"
    if not os.access(exe, os.X_OK):
        raise ConfigError(f"configurable-http-proxy is not installed ({exe}): run `make setup`")
    return exe


# Seconds the hub has to stop its children itself (seen: 20-35 s under load) before the
# supervisor ends them.
HUB_GRACE_S = 60


def start_hub(settings_path: Path, *, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Prepare the course and start JupyterHub in the background, on loopback."""
    settings = load_settings(settings_path)
    proxy = proxy_command()
    settings.root.mkdir(parents=True, exist_ok=True)
    prepare_course(settings)
    env = {
        **os.environ,
        HUB_SETTINGS_ENV: str(settings_path.resolve()),
        PROXY_COMMAND_ENV: str(proxy),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    out = open(log, "ab") if log else None  # noqa: SIM115 - handed to the child process
    hub = [installed_script("jupyterhub"), "-f", str(hub_config_file())]
    return subprocess.Popen(
        [sys.executable, "-m", "autograder.hub.supervise", "--grace", str(HUB_GRACE_S), "--", *hub],
        cwd=settings.root,
        env=env,
        stdout=out or subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_until_up(
    url: str,
    timeout: float = 60,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> float:
    """Seconds until ``url`` answers. Raises TimeoutError when it never does, at once when
    ``proc`` (the hub) exits first; either way with the end of ``log``, the hub's output."""
    import urllib.error
    import urllib.request

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            why = f"the hub exited (status {proc.returncode}) before {url} answered"
            raise TimeoutError(why + _log_tail(log))
        try:
            with urllib.request.urlopen(url, timeout=2):
                return time.monotonic() - start
        except (urllib.error.HTTPError, OSError):
            # The proxy answers 404 until the hub has added its route.
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s" + _log_tail(log))


def _log_tail(log: Path | None, chars: int = 3000) -> str:
    if log is None or not log.is_file():
        return ""
    text = log.read_bytes()[-chars:].decode(errors="replace")
    return f"\n--- the end of {log} ---\n{text}"


def stop_hub(proc: subprocess.Popen[bytes]) -> None:
    """Stop the hub and everything it started: the supervisor gives the hub ``HUB_GRACE_S``
    to stop its proxy, services and users' servers, then ends whatever is left. Only if the
    supervisor itself does not finish is its process group killed."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.terminate()
        proc.wait(timeout=HUB_GRACE_S + 60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
