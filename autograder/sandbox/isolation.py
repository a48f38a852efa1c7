"""Which isolation this machine allows a student's kernel: a separate account, and which
namespaces `unshare` grants; a warning, once, for each kind of isolation that is off.

- accounts: kernels run as sandbox accounts of their own (:mod:`autograder.sandbox.accounts`)
  only when the grader runs as root on Linux, ``AUTOGRADER_SANDBOX_USER`` does not turn them
  off, and no attempt to use one has failed in this process (:func:`give_up_accounts`).
  Without them the kernel runs as the grader's own user.
- network and processes: a network namespace (``unshare``) with only a loopback that is
  down, and a PID namespace, so that everything the notebook starts dies with its kernel.
  The kernel's ZMQ sockets are unix sockets (``ipc``), which work across network
  namespaces. Where namespaces are not available the kernel runs as usual, and a warning
  says that isolation is off.

Kept apart from the accounts and the files so that both can ask whether accounts are in use
without asking each other.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys

from autograder.settings import SANDBOX_USER_ENV

__all__ = [
    "accounts_wanted",
    "give_up_accounts",
    "isolation_prefix",
    "namespace_flags",
    "warn_once",
]

log = logging.getLogger(__name__)

# Tried in order, each with `unshare ... -- true` once per process. `--pid --fork` puts the
# kernel (as PID 1) and everything it starts in a PID namespace: when the kernel dies, the
# system kills and reaps every process left in it, however it was started.
_PID = ("--pid", "--fork", "--kill-child")
# As root, switching to a sandbox account after unshare: no user namespace (one that maps
# only root would leave the account's uid unmapped). A mount namespace (private propagation,
# util-linux's default) for the kernel's own /tmp, /var/tmp, /dev/shm and /run/lock, and an
# IPC namespace: what a notebook leaves in them goes with its last process.
_PRIVATE = ("--mount", "--ipc")
_AS_ROOT_NO_NETWORK = (("--net", *_PRIVATE, *_PID), ("--net", *_PID), ("--net",))
_AS_ROOT_NETWORK = ((*_PRIVATE, *_PID), (*_PID,))
# Otherwise a user namespace first: inside it the kernel holds no privilege over the host's
# namespaces even when the grader runs as root, so it cannot setns() its way back.
_USER = ("--user", "--map-root-user")
_NO_NETWORK = ((*_USER, "--net", *_PID), (*_USER, "--net"), ("--net", *_PID), ("--net",))
_NETWORK = ((*_USER, *_PID), (*_PID,))


@functools.cache
def _unshare_flags(candidates: tuple[tuple[str, ...], ...]) -> tuple[str, ...] | None:
    """The first of ``candidates`` that `unshare` accepts here (probed once per process)."""
    unshare = shutil.which("unshare")
    if sys.platform != "linux" or unshare is None:
        return None
    for flags in candidates:
        try:
            probe = subprocess.run(
                [unshare, *flags, "--", "true"], capture_output=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return flags
    return None


def namespace_flags(*, network: bool, as_root: bool) -> tuple[str, ...] | None:
    """The `unshare` flags for a kernel (with or without network; ``as_root``: one that
    switches to a sandbox account after unshare), or None where none are allowed here."""
    if as_root:
        return _unshare_flags(_AS_ROOT_NETWORK if network else _AS_ROOT_NO_NETWORK)
    return _unshare_flags(_NETWORK if network else _NO_NETWORK)


def isolation_prefix() -> tuple[str, ...] | None:
    """The command prefix that runs a kernel without network here, or None where impossible."""
    as_root = accounts_wanted()
    flags = namespace_flags(network=False, as_root=as_root)
    if flags is None:
        warn_once(
            "network",
            "network isolation is off: util-linux `unshare --net` is not available or not "
            "allowed here; student kernels can reach the network",
        )
        return None
    unshare = shutil.which("unshare")
    assert unshare is not None
    return (unshare, *flags, "--")


_BROKEN: dict[str, str] = {}  # "accounts" -> why sandbox accounts cannot be used here


def accounts_wanted() -> bool:
    """Whether kernels run as sandbox accounts here: root on Linux, not turned off with
    ``AUTOGRADER_SANDBOX_USER``, and not given up (:func:`give_up_accounts`)."""
    off = os.environ.get(SANDBOX_USER_ENV, "").strip().lower() in {"off", "0", "no", "false"}
    return sys.platform == "linux" and os.geteuid() == 0 and not off and "accounts" not in _BROKEN


def give_up_accounts(why: str) -> None:
    """Stop using sandbox accounts in this process (they cannot be used here, ``why``): every
    later kernel runs as the grader's own user."""
    _BROKEN["accounts"] = why


_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Log ``message`` as a warning the first time this process warns about ``key``."""
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)
