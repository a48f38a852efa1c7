"""Students enrolled in a running hub, without a restart: ``autograder roster ... COURSE``
with the hub's ``course.toml`` as COURSE.

For each student added: an OS account and home (an account per person), a hub user, and
membership of the course's student group (``nbgrader-<course>``), through the hub's REST
API with the roster token the launcher keeps in root's state folder. A dropped student
leaves the group (their account and their work stay). The hub's next start enrols the
gradebook's students anyway (:func:`autograder.hub.settings.enrolled`); this is for the
hub that is running.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from typing import Any

from autograder.errors import ConfigError
from autograder.hub.accounts import ensure_system_users
from autograder.hub.settings import HubSettings

__all__ = ["HubDown", "enrol", "unenrol"]


class HubDown(ConfigError):
    """The hub does not answer: it enrols the gradebook's students at its next start."""


def _call(s: HubSettings, method: str, path: str, body: dict[str, Any]) -> int:
    token = s.roster_token.read_text().strip() if s.roster_token.is_file() else ""
    if not token:
        raise HubDown(f"no roster token in {s.roster_token}: the hub has not run as root yet")
    request = urllib.request.Request(
        s.hub_api + path,
        data=json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError as exc:
        raise HubDown(f"the hub at {s.hub_api} did not answer: {exc}") from exc


def enrol(s: HubSettings, students: list[str]) -> None:
    """Accounts, hub users and group membership for ``students`` (idempotent)."""
    if not students:
        return
    if s.system_users:
        for student in students:
            s.home(student).mkdir(parents=True, exist_ok=True)
        ensure_system_users(
            dataclasses.replace(s, instructors=(), tas=(), students=tuple(students))
        )
    status = _call(s, "POST", "/users", {"usernames": students})
    if status not in (201, 409):  # 409: all of them were there already
        raise ConfigError(f"the hub refused to create users ({status})")
    group = f"/groups/nbgrader-{s.course_id}/users"
    status = _call(s, "POST", group, {"users": students})
    if status != 200:
        raise ConfigError(f"the hub refused to enrol students in its group ({status})")


def unenrol(s: HubSettings, student: str) -> None:
    """Out of the course's student group: the course is no longer theirs on the hub."""
    status = _call(s, "DELETE", f"/groups/nbgrader-{s.course_id}/users", {"users": [student]})
    if status != 200:
        raise ConfigError(f"the hub refused to remove {student} from its group ({status})")
