"""One course on JupyterHub: settings from ``hub_config/course.toml``, hub set-up, launcher.

The hub runs on loopback with the course's groups, least-privilege roles and the
formgrader as a Hub-managed service owned by the grader account; ``start_hub`` releases the
labs to the exchange and starts JupyterHub under a supervisor (``autograder.hub.supervise``), so
that ``stop_hub`` stops the hub and everything it started. The proxy is the one ``make setup``
installed from ``package-lock.json``: nothing is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autograder.errors import ConfigError
from autograder.fstree import walk_tree
from autograder.settings import DATA_DIR_ENV, HUB_SETTINGS_ENV, PROJECT_DIR, PROXY_COMMAND_ENV

__all__ = [
    "HubSettings",
    "configure_hub",
    "ensure_system_users",
    "load_settings",
    "prepare_course",
    "protect_heldout",
    "proxy_command",
    "publish_public_data",
    "start_hub",
    "stop_hub",
    "wait_until_up",
    "write_grading_service",
]

_KEYS = {
    "": {"course_id", "labs", "hub", "roster", "auth", "spawner", "gradebook"},
    "hub": {"ip", "port", "hub_port", "proxy_api_port", "service_port", "root"},
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
    return HubSettings(
        course_id=data["course_id"],
        labs=tuple(data.get("labs", ())),
        root=root,
        ip=hub.get("ip", "127.0.0.1"),
        port=int(hub.get("port", 8000)),
        hub_port=int(hub.get("hub_port", 8081)),
        proxy_api_port=int(hub.get("proxy_api_port", 8001)),
        service_port=int(hub.get("service_port", 9999)),
        instructors=tuple(roster.get("instructors", ())),
        tas=tuple(roster.get("tas", ())),
        students=tuple(roster.get("students", ())),
        authenticator=auth.get("class", "shared-password"),
        authenticator_config=dict(auth.get("config", {})),
        spawner=spawner.get("class", "simple"),
        spawner_config=dict(spawner.get("config", {})),
        gradebook_url=data.get("gradebook", {}).get("db_url", ""),
    )


# Config sections of the authenticators JupyterHub knows by a short name.
_SECTIONS = {"shared-password": "SharedPasswordAuthenticator", "dummy": "DummyAuthenticator"}


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def configure_hub(c: Any, s: HubSettings, *, proxy_command: str | None = None) -> None:
    """JupyterHub settings for the course: loopback ports, groups, roles, the formgrader."""
    course = s.course_id
    c.JupyterHub.ip = s.ip
    c.JupyterHub.port = s.port
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = s.hub_port
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{s.proxy_api_port}"
    if proxy_command:
        c.ConfigurableHTTPProxy.command = [proxy_command]
    c.JupyterHub.db_url = f"sqlite:///{s.state / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(s.state / "jupyterhub_cookie_secret")

    c.JupyterHub.authenticator_class = s.authenticator
    section = _SECTIONS.get(s.authenticator, s.authenticator.rsplit(".", 1)[-1])
    for key, value in s.authenticator_config.items():
        c[section][key] = value
    c.Authenticator.allowed_users = set(s.users)

    c.JupyterHub.spawner_class = s.spawner
    if s.spawner == "simple":
        c.SimpleLocalProcessSpawner.home_dir_template = str(s.root / "home" / "{username}")
        if os.geteuid() == 0:
            c.Spawner.args = ["--allow-root"]
    elif s.system_users:
        # The accounts' home directories are set by prepare_course; the server's root is it.
        c.Spawner.notebook_dir = str(s.root / "home" / "{username}")
    for key, value in s.spawner_config.items():
        setattr(c.Spawner, key, value)
    c.Spawner.cmd = [_bin("jupyterhub-singleuser")]
    c.Spawner.environment = {
        "JUPYTER_CONFIG_PATH": str(s.root / "etc" / "jupyter"),
        # Students load the course data from a read-only copy of public/ only.
        DATA_DIR_ENV: str(s.course_data),
    }
    c.Spawner.default_url = "/lab"
    # Servers may list and reach the course service, so the assignment list can find it.
    c.Spawner.server_token_scopes = [
        "access:servers!server",
        "users:activity!user",
        "list:services",
        "read:services",
        "access:services",
    ]

    formgraders = [*s.instructors, *s.tas, s.grader]
    c.JupyterHub.load_groups = {
        f"formgrade-{course}": {"users": formgraders},
        f"nbgrader-{course}": {"users": list(s.students)},
        f"instructors-{course}": {"users": list(s.instructors)},
    }
    c.JupyterHub.load_roles = [
        {
            "name": f"formgrader-{course}",
            "groups": [f"formgrade-{course}"],
            "scopes": [
                f"access:services!service={course}",
                "list:services",
                f"read:services!service={course}",
            ],
        },
        {
            "name": f"student-{course}",
            "groups": [f"nbgrader-{course}"],
            "scopes": ["list:services", f"read:services!service={course}"],
        },
        {
            # Instructors run the course; they are not hub admins either.
            "name": f"instructor-{course}",
            "groups": [f"instructors-{course}"],
            "scopes": [f"read:users!group=nbgrader-{course}", f"groups!group=nbgrader-{course}"],
        },
        {
            "name": f"service-{course}",
            "services": [course],
            "scopes": [
                "read:users:name",
                "read:users:groups",
                "list:groups",
                "read:groups",
                "groups",
            ],
        },
    ]
    grader_home = s.home(s.grader)
    formgrader: dict[str, Any] = {
        "name": course,
        "url": f"http://127.0.0.1:{s.service_port}",
        "command": [
            _bin("jupyterhub-singleuser"),
            f"--ServerApp.root_dir={grader_home}",
            *_FORMGRADER_ARGS,
        ],
        "cwd": str(grader_home),
        "environment": {"JUPYTERHUB_DEFAULT_URL": "/formgrader"},
        "oauth_no_confirm": True,
    }
    c.JupyterHub.services = [formgrader]
    if s.privileged_step:
        # The web-facing formgrader as the grader account; only the grading service, which
        # takes notebooks over a socket and nothing else, runs as root (no url: no web).
        formgrader["user"] = s.grader
        c.JupyterHub.services.append(
            {
                "name": f"{course}-grading",
                "command": [
                    sys.executable,
                    "-I",  # nothing from the working folder or the environment is imported
                    "-m",
                    "autograder.hub.grading_service",
                    "serve",
                    "--settings",
                    str(s.grading_service),
                ],
                "cwd": str(s.state),
            }
        )
    elif os.geteuid() == 0:
        formgrader["command"].insert(1, "--allow-root")


# The formgrader's server: the formgrader and nothing a grader does not need (no JupyterLab,
# no terminals, no kernels: autograding executes through the grading service).
_FORMGRADER_ARGS = [
    "--ServerApp.terminals_enabled=False",
    "--ServerApp.kernel_manager_class=autograder.hub.server.NoKernels",
    *(
        f"--ServerApp.jpserver_extensions={name}=False"
        for name in (
            "jupyterlab",
            "notebook",
            "jupyter_lsp",
            "jupyter_server_terminals",
            "nbgrader.server_extensions.assignment_list",
            "nbgrader.server_extensions.course_list",
            "nbgrader.server_extensions.validate_assignment",
        )
    ),
]

_STUDENT_CONFIG = """\
# nbgrader settings for every user server of the course (written by `autograder hub`).
import os

c = get_config()  # noqa: F821
c.Exchange.root = {exchange!r}
c.CourseDirectory.course_id = {course!r}
# Under the simple spawner all servers share one OS account: name students by hub user.
c.CourseDirectory.student_id = os.environ.get("JUPYTERHUB_USER", "")
"""

_GRADER_CONFIG = """\
# The course directory's nbgrader settings (written by `autograder hub`).
from autograder.course import apply_course_config

c = get_config()  # noqa: F821
apply_course_config(c, root={course_dir!r}, course_id={course!r}, db_url={db_url!r} or None)
c.Exchange.root = {exchange!r}
# With an OS account per student, a submission filed under another student's name is refused.
c.ExchangeCollect.check_owner = {check_owner!r}
# Collect refuses links, special files and other accounts' files, and dates each submission
# by its files' change time, not by the timestamp the student wrote.
c.ExchangeFactory.collect = "autograder.hub.exchange.OwnerCheckedCollect"
if {socket!r}:
    # Not root: notebooks are executed by the course's grading service (sandbox accounts,
    # namespaces, held-out data), reached over its socket.
    from autograder.grading.execute import GraderExecute, autograde_preprocessors
    from autograder.hub.grading_service import HelperExecute

    c.Autograde.autograde_preprocessors = [
        HelperExecute if step is GraderExecute else step for step in autograde_preprocessors()
    ]
    c.HelperExecute.socket_path = {socket!r}
"""


def prepare_course(s: HubSettings) -> None:
    """Homes, the exchange, nbgrader configs, and the course released to the exchange."""
    from autograder.course import Course, create_course

    s.state.mkdir(parents=True, exist_ok=True)
    s.state.chmod(0o700)
    for user in s.users:
        s.home(user).mkdir(parents=True, exist_ok=True)
    if s.system_users:
        ensure_system_users(s)
    protect_heldout()
    s.exchange.mkdir(parents=True, exist_ok=True)
    # nbgrader's exchange: anyone may write; the sticky bit keeps users off others' files.
    s.exchange.chmod(0o1777)
    etc = s.root / "etc" / "jupyter"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "nbgrader_config.py").write_text(
        _STUDENT_CONFIG.format(exchange=str(s.exchange), course=s.course_id)
    )
    if not (s.course_dir / "gradebook.db").exists():
        create_course(s.course_dir, course_id=s.course_id, labs=list(s.labs) or None)
    # The formgrader service starts in the grader's home: nbgrader reads its config there.
    (s.home(s.grader) / "nbgrader_config.py").write_text(
        _GRADER_CONFIG.format(
            course_dir=str(s.course_dir),
            course=s.course_id,
            db_url=s.gradebook_url,
            exchange=str(s.exchange),
            check_owner=s.system_users,
            socket=str(s.grading_socket) if s.privileged_step else "",
        )
    )
    from nbgrader.apps import NbGraderAPI

    config = Course(s.course_dir, s.course_id).config()
    config.Exchange.root = str(s.exchange)
    api = NbGraderAPI(config=config)
    outbound = s.exchange / s.course_id / "outbound"
    for lab in s.labs:
        if (outbound / lab).is_dir():
            continue  # released at an earlier start (and the folders are the grader's now)
        result = api.release_assignment(lab)
        if not result["success"]:
            raise ConfigError(f"nbgrader release_assignment {lab} failed")
    for student in s.students:
        api.gradebook.update_or_create_student(student)
    publish_public_data(s.course_data)
    if s.privileged_step:
        _hand_to_grader(s)
        write_grading_service(s)


def write_grading_service(s: HubSettings) -> None:
    """The privileged step's settings, as data in root's state folder."""
    from autograder.data.loaders import data_dir
    from autograder.hub.grading_service import HelperSettings

    env = {k: v for k, v in os.environ.items() if k.startswith("AUTOGRADER_")}
    env.pop(HUB_SETTINGS_ENV, None)
    env.pop(PROXY_COMMAND_ENV, None)
    env[DATA_DIR_ENV] = str(data_dir())
    HelperSettings(
        socket=str(s.grading_socket), grader=s.grader, labs=s.labs, environment=env
    ).write(s.grading_service)


def _hand_to_grader(s: HubSettings) -> None:
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


def publish_public_data(target: Path) -> None:
    """A read-only copy of the staged ``public/`` data sets (never ``heldout/``)."""
    from autograder.data.loaders import data_dir

    source = data_dir() / "public"
    if not source.is_dir():
        raise ConfigError(f"no staged data in {source}: run `autograder stage-data` first")
    public = target / "public"
    if public.exists():
        for path in [public, *public.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(public)
    shutil.copytree(source, public)
    for path in [*public.rglob("*"), public]:
        path.chmod(0o555 if path.is_dir() else 0o444)


def protect_heldout() -> Path:
    """The held-out grading data (and the keras-format mirror it was split from): the
    grading user's alone (0700), whatever umask staged it. Returns ``heldout/``."""
    from autograder.data.loaders import grader_only_dirs

    folders = grader_only_dirs()
    for folder in folders:
        if folder.is_dir():
            for path in folder.rglob("*"):
                path.chmod(0o700 if path.is_dir() else 0o600)
            folder.chmod(0o700)
    return folders[0]


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
    hub = [_bin("jupyterhub"), "-f", str(hub_config_file())]
    return subprocess.Popen(
        [sys.executable, "-m", "autograder.hub.supervise", "--grace", str(HUB_GRACE_S), "--", *hub],
        cwd=settings.root,
        env=env,
        stdout=out or subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_until_up(url: str, timeout: float = 60) -> float:
    """Seconds until ``url`` answers; raises TimeoutError when it never does."""
    import urllib.error
    import urllib.request

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return time.monotonic() - start
        except (urllib.error.HTTPError, OSError):
            # The proxy answers 404 until the hub has added its route.
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


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
