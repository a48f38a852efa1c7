"""The course's hub settings: ``hub_config/course.toml`` read and validated into
:class:`HubSettings`, with the paths and accounts derived from it.

One validated object that the hub's configuration (:mod:`.config`), the course's
preparation (:mod:`.prepare`, :mod:`.accounts`) and the launcher (:mod:`.launch`) all read.
The students are those the settings list and those enrolled in the course's gradebook (read
as data). ``hub_config/jupyterhub_config.py`` loads it in the hub's own process: nbgrader
is imported only when a course exists.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autograder.errors import ConfigError

__all__ = ["HubSettings", "enrolled", "load_settings"]

_KEYS = {
    "": {"course_id", "labs", "hub", "roster", "auth", "spawner", "gradebook"},
    "hub": {"ip", "port", "hub_port", "proxy_api_port", "service_port", "submit_port", "root"},
    "roster": {"instructors", "tas", "students"},
    "auth": {"class", "config"},
    "spawner": {"class", "config"},
    "gradebook": {"db_url"},
}


@dataclass(frozen=True)
class HubSettings:
    course_id: str
    labs: tuple[str, ...]
    root: Path
    ip: str = "127.0.0.1"
    port: int = 8000
    hub_port: int = 8081
    proxy_api_port: int = 8001
    service_port: int = 9999
    submit_port: int = 9998
    instructors: tuple[str, ...] = ()
    tas: tuple[str, ...] = ()
    students: tuple[str, ...] = ()
    authenticator: str = "shared-password"
    authenticator_config: dict[str, Any] = field(default_factory=dict, hash=False)
    spawner: str = "simple"
    spawner_config: dict[str, Any] = field(default_factory=dict, hash=False)
    gradebook_url: str = ""

    @property
    def grader(self) -> str:
        """The account that owns the course directory and runs the formgrader service."""
        return f"grader-{self.course_id}"

    @property
    def course_dir(self) -> Path:
        return self.home(self.grader) / self.course_id

    @property
    def exchange(self) -> Path:
        return self.root / "exchange"

    @property
    def course_data(self) -> Path:
        """What students' servers load: public/ only, read-only; held-out data stays out."""
        return self.root / "course-data"

    @property
    def state(self) -> Path:
        """The hub's own database and cookie secret: readable by the hub's user only."""
        return self.root / "state"

    @property
    def grading_service(self) -> Path:
        """The privileged step's settings (:mod:`.grading_service`): root's, as data."""
        return self.state / "grading-service.json"

    @property
    def grading_socket(self) -> Path:
        return self.root / "run" / "grading.sock"

    @property
    def submit_service(self) -> str:
        """The grade-on-submit service's name (:mod:`.on_submit`): its pages are under
        ``/services/<name>/``."""
        return f"{self.course_id}-submit"

    @property
    def submit_state(self) -> Path:
        """The grade-on-submit service's queue and statuses: the grader account's."""
        return self.home(self.grader) / ".grade-on-submit"

    @property
    def roster_token(self) -> Path:
        """The hub API token with which ``autograder roster ... --hub`` enrols students in
        the running hub: root's, in the state folder."""
        return self.state / "roster-token"

    @property
    def hub_api(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}/hub/api"

    @property
    def privileged_step(self) -> bool:
        """The formgrader runs as the grader account and hands execution to the root-owned
        grading service: with an OS account per person and a launcher run as root."""
        return self.system_users and os.geteuid() == 0

    @property
    def system_users(self) -> bool:
        """Each person's server runs as their own OS account (created by the launcher)."""
        return self.spawner in _SYSTEM_USER_SPAWNERS

    @property
    def users(self) -> tuple[str, ...]:
        return (*self.instructors, *self.tas, *self.students, self.grader)

    def home(self, user: str) -> Path:
        return self.root / "home" / user


_SYSTEM_USER_SPAWNERS = {"localprocess", "jupyterhub.spawner.LocalProcessSpawner"}


def load_settings(path: Path) -> HubSettings:
    """Read and validate a course file; unknown keys are refused, naming the key."""
    data = tomllib.loads(path.read_text())
    for section, allowed in _KEYS.items():
        table = data if not section else data.get(section, {})
        unknown = sorted(set(table) - allowed)
        if unknown:
            where = f"[{section}]" if section else "top level"
            raise ConfigError(f"{path.name} {where}: unknown key(s) {', '.join(unknown)}")
    hub, roster = data.get("hub", {}), data.get("roster", {})
    auth, spawner = data.get("auth", {}), data.get("spawner", {})
    root = Path(hub.get("root", "var/hub"))
    if not root.is_absolute():
        root = (path.parent.parent / root).resolve()
    settings = HubSettings(
        course_id=data["course_id"],
        labs=tuple(data.get("labs", ())),
        root=root,
        ip=hub.get("ip", "127.0.0.1"),
        port=int(hub.get("port", 8000)),
        hub_port=int(hub.get("hub_port", 8081)),
        proxy_api_port=int(hub.get("proxy_api_port", 8001)),
        service_port=int(hub.get("service_port", 9999)),
        submit_port=int(hub.get("submit_port", 9998)),
        instructors=tuple(roster.get("instructors", ())),
        tas=tuple(roster.get("tas", ())),
        students=tuple(roster.get("students", ())),
        authenticator=auth.get("class", "shared-password"),
        authenticator_config=dict(auth.get("config", {})),
        spawner=spawner.get("class", "simple"),
        spawner_config=dict(spawner.get("config", {})),
        gradebook_url=data.get("gradebook", {}).get("db_url", ""),
    )
    return replace(settings, students=_unique((*settings.students, *enrolled(settings))))


def _unique(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def enrolled(s: HubSettings) -> tuple[str, ...]:
    """The students in the course's gradebook (``autograder course init --roster``,
    ``autograder roster``); none before the course exists. The hub enrols them with those
    the settings list."""
    if not (s.course_dir / "nbgrader_config.py").is_file():
        return ()
    from autograder.course import Course
    from autograder.roster import student_ids

    return tuple(sorted(student_ids(Course.open(s.course_dir).db_url)))
