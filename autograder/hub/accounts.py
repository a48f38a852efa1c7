"""OS accounts for a hub whose users' servers run as their own accounts: one account per
person, home under the hub's root, and what root made for the course handed to the grader
account.

Apart from :mod:`.prepare` because this is what needs root and changes accounts and owners
(``useradd``, ``usermod``, ``chown``).
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

from autograder.errors import ConfigError
from autograder.fstree import walk_tree
from autograder.hub.settings import HubSettings

__all__ = ["ensure_system_users", "hand_to_grader"]


def hand_to_grader(s: HubSettings) -> None:
    """What root made for the course becomes the grader account's: its home with the course
    directory, and the course's exchange folders. Only root's own entries change hands,
    never through a link, never a file with other names (a hard link)."""
    entry = pwd.getpwnam(s.grader)

    def give(path: str, st: os.stat_result) -> None:
        if st.st_uid != 0 or stat.S_ISLNK(st.st_mode):
            return
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            return
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    course_exchange = s.exchange / s.course_id
    for top in (s.home(s.grader), course_exchange):
        give(str(top), os.lstat(top))
        walk_tree(top, give)
    # Students create their submission folders in inbound (nbgrader's 0733); the sticky bit
    # keeps one student from renaming or removing another's.
    (course_exchange / "inbound").chmod(0o1733)


def _unreachable(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that other accounts cannot enter."""
    for parent in reversed(path.resolve().parents):
        if not parent.stat().st_mode & stat.S_IXOTH:
            return parent
    return None


def ensure_system_users(s: HubSettings) -> None:
    """One OS account per person, home in the hub's ``home/`` (0700, their own): students
    cannot read each other's work, the course directory or the held-out data."""
    if os.geteuid() != 0:
        raise ConfigError("spawner 'localprocess' creates OS accounts: run the launcher as root")
    for needed in (Path(sys.executable), s.root):
        blocked = _unreachable(needed)
        if blocked is not None:
            raise ConfigError(
                f"other accounts cannot enter {blocked}, on the way to {needed}: "
                "use a hub root and a Python (Debian's python3.11) outside it"
            )
    for user in s.users:
        home = s.home(user)
        try:
            current = pwd.getpwnam(user).pw_dir
        except KeyError:
            cmd = ["useradd", "--no-create-home", "--home-dir", str(home)]
            _run([*cmd, "--shell", "/usr/sbin/nologin", "--user-group", user])
        else:
            if current != str(home):
                _run(["usermod", "--home", str(home), user])
        entry = pwd.getpwnam(user)
        for path in [home, *home.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
        home.chmod(0o700)


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"{cmd[0]} failed: {proc.stderr.strip() or proc.returncode}")
