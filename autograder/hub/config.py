"""The hub's JupyterHub configuration: loopback ports, the course's groups and
least-privilege roles, the authenticator and spawner, and the formgrader as a Hub-managed
service owned by the grader account (beside it, with the privileged step, the root-owned
grading service and its command).

``hub_config/jupyterhub_config.py`` calls :func:`configure_hub` in the hub's own process: it
only sets configuration; preparing the course (:mod:`.prepare`) and starting the hub
(:mod:`.launch`) happen elsewhere.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from autograder.hub.settings import HubSettings
from autograder.settings import DATA_DIR_ENV, QUIET_TENSORFLOW

__all__ = ["configure_hub", "installed_script"]

# Config sections of the authenticators JupyterHub knows by a short name.
_SECTIONS = {"shared-password": "SharedPasswordAuthenticator", "dummy": "DummyAuthenticator"}


def installed_script(name: str) -> str:
    """A program installed beside the running Python: ``jupyterhub``,
    ``jupyterhub-singleuser``."""
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
    c.Spawner.cmd = [installed_script("jupyterhub-singleuser")]
    c.Spawner.environment = {
        "JUPYTER_CONFIG_PATH": str(s.root / "etc" / "jupyter"),
        # Students load the course data from a read-only copy of public/ only.
        DATA_DIR_ENV: str(s.course_data),
        # TensorFlow's own CPU kernels, as the grader runs them: what runs for the student
        # runs when graded.
        "TF_ENABLE_ONEDNN_OPTS": QUIET_TENSORFLOW["TF_ENABLE_ONEDNN_OPTS"],
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
                f"access:services!service={s.submit_service}",
                "list:services",
                f"read:services!service={course}",
            ],
        },
        {
            "name": f"student-{course}",
            "groups": [f"nbgrader-{course}"],
            "scopes": [
                "list:services",
                f"read:services!service={course}",
                f"access:services!service={s.submit_service}",
            ],
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
            installed_script("jupyterhub-singleuser"),
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
        c.JupyterHub.services.append(_grade_on_submit(s))
        _roster_token(c, s)
    elif os.geteuid() == 0:
        formgrader["command"].insert(1, "--allow-root")


def _grade_on_submit(s: HubSettings) -> dict[str, Any]:
    """The grade-on-submit service (:mod:`.on_submit`): web-facing, so the grader account;
    notebooks reach the sandbox only through the grading service."""
    return {
        "name": s.submit_service,
        "url": f"http://127.0.0.1:{s.submit_port}",
        "user": s.grader,
        "command": [
            sys.executable,
            "-m",
            "autograder.hub.on_submit",
            "serve",
            "--course-dir",
            str(s.course_dir),
            "--exchange",
            str(s.exchange),
            "--course-id",
            s.course_id,
            "--state",
            str(s.submit_state),
            *(f"--lab={lab}" for lab in s.labs),
            *(f"--staff={user}" for user in (*s.instructors, *s.tas)),
            *(["--check-owner"] if s.system_users else []),
        ],
        "cwd": str(s.home(s.grader)),
        "oauth_no_confirm": True,
    }


def _roster_token(c: Any, s: HubSettings) -> None:
    """A token, root's, with which ``autograder roster ... --hub`` enrols students in the
    running hub: it may create users and change the course's student group, nothing else."""
    if not s.roster_token.is_file():
        return
    name = f"{s.course_id}-roster"
    c.JupyterHub.services.append({"name": name, "api_token": s.roster_token.read_text().strip()})
    c.JupyterHub.load_roles.append(
        {
            "name": name,
            "services": [name],
            "scopes": ["admin:users", f"groups!group=nbgrader-{s.course_id}"],
        }
    )


# The formgrader's server: the formgrader and nothing a grader does not need (no JupyterLab,
# no terminals, no kernels: autograding executes through the grading service).
_FORMGRADER_ARGS = [
    "--ServerApp.terminals_enabled=False",
    "--ServerApp.kernel_manager_class=autograder.hub.server.NoKernels",
    # Its autograde and feedback buttons take turns with the batch and grade-on-submit.
    "--ServerApp.jpserver_extensions=autograder.hub.server=True",
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
