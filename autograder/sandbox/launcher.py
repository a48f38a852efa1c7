"""The sandbox's last step before a student's kernel runs: stdlib only, run as root.

Run between `unshare` and the kernel (``python -I -S -c <this file> ARGS -- KERNEL_CMD``),
or called in a kernel forked from the fork server (:mod:`autograder.sandbox.forkserver`),
which enters the namespaces itself first (:func:`enter_namespaces`). :func:`launch`
joins the kernel's cgroups and mounts its private temporary folders (size-capped tmpfs)
and masks, sets the resource limits, then the account (groups, gid, uid: all of them,
real, effective and saved), then no_new_privs so that no setuid program can give
privileges back. Without a PID namespace it then becomes the kernel (whose parent
ipykernel watches). In a PID namespace it stays as the namespace's init (PID 1): it
starts the kernel, reaps whatever is orphaned (killed processes must not linger as
zombies: they count against the account's process limit), and ends everything when the
kernel ends or when the grader is gone (the grader holds the write end of the pipe WATCH:
when it dies the pipe reads as closed). It exits with the kernel's exit code, 128 + N for
a kernel killed by signal N.
"""

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import sys
from collections.abc import Callable

__all__ = ["enter_namespaces", "launch"]

# `unshare` flags -> clone(2) flags, for a kernel forked by the fork server.
_CLONE = {
    "--mount": 0x00020000,
    "--ipc": 0x08000000,
    "--net": 0x40000000,
    "--pid": 0x20000000,
    "--user": 0x10000000,
}
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 262144

Start = Callable[[list[str], dict[str, str]], None]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        raise OSError(ctypes.get_errno(), what)


def enter_namespaces(flags: list[str]) -> None:
    """What `unshare FLAGS --` does, in this process: new namespaces; with ``--mount``
    private propagation; with ``--map-root-user`` this user as root; with ``--pid``
    (``--fork --kill-child``) a fork whose child, PID 1 of the new namespace, returns
    while this process waits for it and exits as it did (and kills it if killed)."""
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    clone = 0
    for flag in flags:
        clone |= _CLONE.get(flag, 0)
    _check(libc.unshare(clone), "unshare")
    if "--map-root-user" in flags:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
    if "--mount" in flags:
        _check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    if "--pid" not in flags:
        return
    alive_r, alive_w = os.pipe()  # closed at the parent's death: PR_SET_PDEATHSIG's race
    child = os.fork()
    if child == 0:
        _check(libc.prctl(1, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
        os.close(alive_w)
        gone = select.poll()
        gone.register(alive_r, select.POLLIN | select.POLLHUP)
        if gone.poll(0):  # the parent died before prctl
            os._exit(128 + signal.SIGKILL)
        os.close(alive_r)
        return
    os.close(alive_r)
    for sig in (signal.SIGINT, signal.SIGTERM):  # like `unshare --fork`: the child's
        signal.signal(sig, signal.SIG_IGN)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _limit(res: int, value: int) -> None:
    _soft, hard = resource.getrlimit(res)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(res, (value, value))


def launch(args: list[str], start: Start | None = None) -> None:
    """ARGS: nproc, fsize, uid, gid, watch, tmpfs, cgroups, masks, empty, ``--``, the
    kernel's command (``-`` where a step does not apply). ``start(cmd, env)`` runs the
    kernel in this process (a forked kernel); by default it is exec'd. Never returns."""
    nproc, fsize, uid, gid, watch, tmpfs, cgroups, masks, empty = args[:9]
    cmd = args[10:]
    libc = _libc()
    if cgroups != "-":  # join the kernel's memory, pids and cpu groups while still root
        for procs in cgroups.split(","):
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
    if masks != "-":  # in the kernel's own mount namespace: the grader's data, hidden
        for path in json.loads(masks):
            if os.path.isdir(path) and not os.path.islink(path):  # an empty, read-only folder
                options = b"size=4k,mode=000"
                done = libc.mount(b"tmpfs", path.encode(), b"tmpfs", 1 | 2 | 4 | 8, options)
            elif os.path.isfile(path) and not os.path.islink(path):  # an unreadable empty file
                done = libc.mount(empty.encode(), path.encode(), None, _MS_BIND, None)
            else:
                continue
            _check(done, "hiding " + path)
    if tmpfs != "-":  # in the kernel's own mount namespace: one tmpfs (MS_NOSUID | MS_NODEV)
        options = (f"size={tmpfs}m,mode=1777").encode()
        _check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 2 | 4, options), "mount tmpfs on /tmp")
        for target in ("/var/tmp", "/dev/shm", "/run/lock"):  # the same one (MS_BIND)
            if os.path.isdir(target) and not os.path.islink(target):
                _check(libc.mount(b"/tmp", target.encode(), None, _MS_BIND, None), "bind " + target)
    _limit(resource.RLIMIT_CORE, 0)
    if fsize != "-":
        _limit(resource.RLIMIT_FSIZE, int(fsize))
    if nproc != "-":
        _limit(resource.RLIMIT_NPROC, int(nproc))
    if uid != "-":
        os.setgroups([])
        os.setresgid(int(gid), int(gid), int(gid))
        os.setresuid(int(uid), int(uid), int(uid))
    _check(libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    env = dict(os.environ)
    if watch == "-":
        if start is not None:
            start(cmd, env)
        os.execvp(cmd[0], cmd)
    _init(int(watch), cmd, env, start)


def _init(watch: int, cmd: list[str], env: dict[str, str], start: Start | None) -> None:
    signal.signal(signal.SIGINT, lambda *args: None)  # interrupts are the kernel's
    env.pop("JPY_PARENT_PID", None)  # its parent is this init, which watches the grader
    kernel = os.fork()
    if kernel == 0:
        os.close(watch)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if start is not None:
            start(cmd, env)
        os.execvpe(cmd[0], cmd, env)
    poll = select.poll()
    poll.register(watch, select.POLLIN | select.POLLHUP)
    status = None
    while status is None:
        while True:
            try:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
            if pid == kernel:
                status = os.waitstatus_to_exitcode(wstatus)
                break
        if status is None and poll.poll(200):
            status = 128 + signal.SIGKILL  # the grader is gone: so is everything here
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)
    os._exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
    launch(sys.argv[1:])
