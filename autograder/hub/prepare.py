"""Preparing the course for the hub, before it starts: the hub's folders, the nbgrader
configs for students' servers and for the grader, the labs released to the exchange, the
held-out data made the grading user's alone, a read-only copy of the public data, and the
grading service's settings.

The launcher (:mod:`.launch`) runs it at each start; creating OS accounts and handing root's
files to the grader account, the part that changes owners, is :mod:`.accounts`'.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from autograder.errors import ConfigError
from autograder.fstree import write_fresh
from autograder.hub.accounts import ensure_system_users, hand_to_grader
from autograder.hub.settings import HubSettings
from autograder.settings import DATA_DIR_ENV, HUB_SETTINGS_ENV, PROXY_COMMAND_ENV

__all__ = [
    "prepare_course",
    "protect_heldout",
    "publish_public_data",
    "write_grading_service",
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
    from autograder.grading.execute import GraderExecute
    from autograder.grading.preprocessors import autograde_preprocessors
    from autograder.hub.grading_service import HelperExecute

    c.Autograde.autograde_preprocessors = [
        HelperExecute if step is GraderExecute else step for step in autograde_preprocessors()
    ]
    c.HelperExecute.socket_path = {socket!r}
"""


def prepare_course(s: HubSettings) -> None:
    """Homes, the exchange, nbgrader configs, and the course released to the exchange."""
    from autograder.course import Course, create_course
    from autograder.schedule import is_open, load_schedule

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
    if not (s.course_dir / "nbgrader_config.py").exists():
        create_course(
            s.course_dir, course_id=s.course_id, labs=list(s.labs) or None, db_url=s.gradebook_url
        )
    # What `autograder grade` will read must be what the formgrader is given: one gradebook.
    course = Course.open(s.course_dir)
    wanted = Course(course.root, s.course_id, s.gradebook_url)
    if (course.course_id, course.db_url) != (wanted.course_id, wanted.db_url):
        raise ConfigError(
            f"{s.course_dir / 'nbgrader_config.py'} names course {course.course_id!r} with "
            f"gradebook {course.db_url}; the hub's settings say {s.course_id!r} with "
            f"{s.gradebook_url or 'the default'}: make them agree"
        )
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

    config = course.config()
    config.Exchange.root = str(s.exchange)
    api = NbGraderAPI(config=config)
    outbound = s.exchange / s.course_id / "outbound"
    schedule = load_schedule(s.course_dir)
    for lab in s.labs:
        if (outbound / lab).is_dir():
            continue  # released at an earlier start (and the folders are the grader's now)
        if not is_open(schedule, lab):
            continue  # the grade-on-submit service releases it when it opens
        result = api.release_assignment(lab)
        if not result["success"]:
            raise ConfigError(f"nbgrader release_assignment {lab} failed")
    # The course's exchange folders as nbgrader's release makes them, for a hub started
    # before any lab opens: students may submit into inbound, not list it.
    for folder, mode in (("", 0o755), ("outbound", 0o755), ("inbound", 0o733)):
        path = s.exchange / s.course_id / folder
        if not path.is_dir():
            path.mkdir()
            path.chmod(mode)
    for student in s.students:
        api.gradebook.update_or_create_student(student)  # the settings' own list
    (s.submit_state).mkdir(parents=True, exist_ok=True)
    publish_public_data(s.course_data)
    if s.privileged_step:
        hand_to_grader(s)
        write_grading_service(s)
        if not s.roster_token.is_file():
            write_fresh(s.roster_token, secrets.token_hex(32))


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
