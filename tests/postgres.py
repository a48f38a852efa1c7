"""A private PostgreSQL server for a test: Debian's binaries, a throwaway cluster owned by
the ``postgres`` account (the server refuses to run as root), listening on a Unix socket in
its own folder only (no TCP port), stopped and removed afterwards."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"no PostgreSQL {name}: `make setup` installs Debian's postgresql")
    return found[-1]


def _as_postgres(*cmd: str) -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *cmd],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a SQLAlchemy URL base (``postgresql+psycopg2://postgres@/{db}?host=...``)."""
    account = pwd.getpwnam("postgres")
    folder = Path(tempfile.mkdtemp(prefix="autograder-pg-", dir="/tmp"))
    os.chown(folder, account.pw_uid, account.pw_gid)
    data = folder / "data"
    try:
        _as_postgres(_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
        options = f"-c listen_addresses='' -c unix_socket_directories='{folder}' -F"
        # The server's output to a file: through a pipe it would keep the pipe open.
        start = [_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log")]
        _as_postgres(*start, "-w", "-t", "60", "start")
        yield f"postgresql+psycopg2://postgres@/{{db}}?host={folder}"
    finally:
        _stop(data)
        shutil.rmtree(folder, ignore_errors=True)


def _stop(data: Path) -> None:
    """Stop the server however far it got; never leave it running."""
    pid_file = data / "postmaster.pid"
    if not pid_file.is_file():
        return
    try:
        _as_postgres(_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    except (subprocess.SubprocessError, OSError):
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


def create_database(url_base: str, name: str) -> str:
    """A new database on the server; its URL."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url_base.format(db="postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return url_base.format(db=name)
