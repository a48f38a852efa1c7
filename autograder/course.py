"""An nbgrader course directory wired to the grader: create, release, submit, autograde."""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autograder._runtime import ensure_tool_path
from autograder.errors import ConfigError, GradingError
from autograder.grading.preprocessors import (
    GRADER_OUTPUTS,
    autograde_preprocessors,
    sanitize_preprocessors,
)
from autograder.reports.feedback import feedback_preprocessors
from autograder.rubric import check_notebook_against_rubric, lab_ids, load_rubric
from autograder.settings import PROJECT_DIR

__all__ = [
    "Course",
    "apply_course_config",
    "configure_grader",
    "create_course",
    "default_source_root",
    "read_course_config",
]

DEFAULT_COURSE_ID = "day2-dl"

_CONFIG_FILE = """\
# nbgrader configuration for this course, written by `autograder course init`.
# The grading pipeline (clean-process evaluation of the saved model) is set up by
# autograder.course.apply_course_config; edit the course id or database here.
import os

from autograder.course import apply_course_config

c = get_config()  # noqa: F821
apply_course_config(c, root=os.path.dirname(os.path.abspath(__file__)), course_id={course_id!r})
"""
# Read as data by the grader (read_course_config): plain strings only.
_DB_LINE = "c.CourseDirectory.db_url = {db_url!r}\n"


def default_source_root() -> Path:
    """The project's ``source/``: the current folder's if it has one, else the checkout's."""
    here = Path.cwd() / "source"
    return here if here.is_dir() else PROJECT_DIR / "source"


def apply_course_config(
    c: Any, *, root: str | Path, course_id: str = DEFAULT_COURSE_ID, db_url: str | None = None
) -> None:
    """Everything nbgrader needs for this course; used by the config file and the API alike."""
    root = Path(root)
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.course_id = course_id
    c.CourseDirectory.db_url = db_url or f"sqlite:///{root / 'gradebook.db'}"
    c.AssignLatePenalties.plugin_class = "autograder.grading.late.PolicyPenalty"  # late_policy.toml
    configure_grader(c)


def configure_grader(c: Any) -> None:
    """Apply the grader's settings to an nbgrader config object (``get_config()``)."""
    from nbgrader.coursedir import CourseDirectory

    c.Autograde.autograde_preprocessors = autograde_preprocessors()
    c.Autograde.sanitize_preprocessors = sanitize_preprocessors()
    default_ignore = list(CourseDirectory.class_traits()["ignore"].default())
    c.CourseDirectory.ignore = [*default_ignore, *GRADER_OUTPUTS]
    c.GraderExecute.timeout = 900
    # Everything needed is saved by the capture cell; a graceful shutdown waits ~3 s for
    # TensorFlow's exit handlers, per notebook.
    c.GraderExecute.shutdown_kernel = "immediate"
    c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
    # The grader's report first in each feedback page; hidden tests cleared from it.
    c.GenerateFeedback.preprocessors = feedback_preprocessors()


_SETTINGS = {"course_id", "db_url"}


def read_course_config(root: Path) -> dict[str, str]:
    """The course id and gradebook URL a course's ``nbgrader_config.py`` sets, read as data:
    the file is parsed, never run (an account that can write it must not run code as
    whoever reads it). Found as ``apply_course_config(..., course_id=..., db_url=...)``
    keywords or ``c.CourseDirectory.<name> = ...``, later ones winning; each must be a
    plain string, else the course is refused with the line to fix."""
    path = root / "nbgrader_config.py"
    if not path.is_file():
        return {}
    try:
        tree = ast.parse(path.read_text(), str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    found: list[tuple[int, int, str, ast.expr]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called(node.func) == "apply_course_config":
            found += [(k.lineno, k.col_offset, k.arg, k.value) for k in node.keywords if k.arg]
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if (
                    isinstance(t, ast.Attribute)
                    and isinstance(t.value, ast.Attribute)
                    and t.value.attr == "CourseDirectory"
                    and node.value is not None
                ):
                    found.append((node.lineno, node.col_offset, t.attr, node.value))
    settings: dict[str, str] = {}
    for line, _, name, value in sorted(found, key=lambda f: (f[0], f[1])):
        if name not in _SETTINGS:
            continue
        if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
            raise ConfigError(
                f"{path.name} line {line}: {name} must be a plain string here (the grader "
                "reads this file as data, without running it)"
            )
        settings[name] = value.value
    return settings


def _called(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


@dataclass(frozen=True)
class Course:
    root: Path
    course_id: str = DEFAULT_COURSE_ID
    database: str = ""  # the gradebook's URL; empty: gradebook.db in the course directory

    @classmethod
    def open(cls, root: Path) -> Course:
        """The course as its own ``nbgrader_config.py`` sets it (id, gradebook)."""
        settings = read_course_config(root)
        course_id = settings.get("course_id", DEFAULT_COURSE_ID)
        return cls(root.resolve(), course_id, settings.get("db_url", ""))

    @property
    def db_url(self) -> str:
        return self.database or f"sqlite:///{self.root / 'gradebook.db'}"

    def config(self) -> Any:
        from traitlets.config import Config

        c = Config()
        apply_course_config(
            c, root=self.root, course_id=self.course_id, db_url=self.database or None
        )
        return c

    def api(self) -> Any:
        from nbgrader.apps import NbGraderAPI

        ensure_tool_path()
        return NbGraderAPI(config=self.config())

    def generate_assignment(self, lab: str) -> None:
        """Add the lab to the gradebook and write its student version in ``release/``
        (nbgrader's generate_assignment; the hub then releases it to students)."""
        nb = self.root / "source" / lab / f"{load_rubric(lab).notebook}.ipynb"
        check_notebook_against_rubric(nb, load_rubric(lab))
        self._refuse_another_courses(lab)
        result = self.api().generate_assignment(lab, force=True, create=True)
        if not result["success"]:
            raise GradingError(f"generate_assignment {lab} failed; see {self.root}")

    def _refuse_another_courses(self, lab: str) -> None:
        """One database per course: nbgrader names an assignment once per database whatever
        its course, and keeps one table of students for all, so a second course there
        would take the first one's labs over (grades and due dates with them) and mix
        both classes in every export."""
        from nbgrader.api import Gradebook

        ensure_tool_path()
        with Gradebook(self.db_url, self.course_id) as gb:
            others = sorted({a.course_id for a in gb.assignments} - {self.course_id})
        if others:
            raise ConfigError(
                f"this gradebook holds course {others[0]!r}: give course {self.course_id!r} "
                f"a database of its own (db_url in its nbgrader_config.py) before {lab}"
            )

    def submit(
        self, student: str, lab: str, notebook: Path, timestamp: datetime | None = None
    ) -> Path:
        """Place a notebook where ``nbgrader collect`` would: submitted/<student>/<lab>/."""
        target = self.root / "submitted" / student / lab
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        dest = target / f"{load_rubric(lab).notebook}.ipynb"
        shutil.copyfile(notebook, dest)
        stamp = (timestamp or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S.%f %Z")
        (target / "timestamp.txt").write_text(stamp)
        return dest

    def autograde(self, lab: str, student: str, *, force: bool = True) -> dict[str, Any]:
        """nbgrader's autograde for one submission, with this course's pipeline."""
        result: dict[str, Any] = self.api().autograde(lab, student, force=force, create=True)
        return result


def create_course(
    root: Path,
    *,
    course_id: str = DEFAULT_COURSE_ID,
    labs: list[str] | None = None,
    source_root: Path | None = None,
    db_url: str = "",
) -> Course:
    """A fresh course directory with the labs' sources, config file and released labs;
    its gradebook ``db_url`` (default: SQLite in the directory)."""
    source_root = source_root or default_source_root()
    labs = labs or [lab for lab in lab_ids() if (source_root / lab).is_dir()]
    if not labs:
        raise ConfigError(f"no lab sources found under {source_root}")
    root.mkdir(parents=True, exist_ok=True)
    config = _CONFIG_FILE.format(course_id=course_id)
    config += _DB_LINE.format(db_url=db_url) if db_url else ""
    (root / "nbgrader_config.py").write_text(config)
    course = Course(root.resolve(), course_id, db_url)
    for lab in labs:
        dest = root / "source" / lab
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(source_root / lab, dest)
        course.generate_assignment(lab)
    return course
