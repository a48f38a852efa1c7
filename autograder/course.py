"""An nbgrader course directory wired to the grader: create, release, submit, autograde."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autograder._runtime import ensure_tool_path
from autograder.errors import ConfigError, GradingError
from autograder.grading.preprocessors import GRADER_OUTPUTS, autograde_preprocessors
from autograder.reports.feedback import feedback_preprocessors
from autograder.rubric import check_notebook_against_rubric, lab_ids, load_rubric
from autograder.settings import PROJECT_DIR

__all__ = [
    "Course",
    "apply_course_config",
    "configure_grader",
    "create_course",
    "default_source_root",
]

DEFAULT_COURSE_ID = "day2-dl"

_CONFIG_FILE = """\
# nbgrader configuration for this course, written when the course was created.
# The grading pipeline (clean-process evaluation of the saved model) is set up by
# autograder.course.apply_course_config; edit the course id or database here.
import os

from autograder.course import apply_course_config

c = get_config()  # noqa: F821
apply_course_config(c, root=os.path.dirname(os.path.abspath(__file__)), course_id={course_id!r})
"""


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
    default_ignore = list(CourseDirectory.class_traits()["ignore"].default())
    c.CourseDirectory.ignore = [*default_ignore, *GRADER_OUTPUTS]
    c.GraderExecute.timeout = 900
    # Everything needed is saved by the capture cell; a graceful shutdown waits ~3 s for
    # TensorFlow's exit handlers, per notebook.
    c.GraderExecute.shutdown_kernel = "immediate"
    c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
    # The grader's report first in each feedback page; hidden tests cleared from it.
    c.GenerateFeedback.preprocessors = feedback_preprocessors()


@dataclass(frozen=True)
class Course:
    root: Path
    course_id: str = DEFAULT_COURSE_ID

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.root / 'gradebook.db'}"

    def config(self) -> Any:
        from traitlets.config import Config

        c = Config()
        apply_course_config(c, root=self.root, course_id=self.course_id)
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
        result = self.api().generate_assignment(lab, force=True, create=True)
        if not result["success"]:
            raise GradingError(f"generate_assignment {lab} failed; see {self.root}")

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
) -> Course:
    """A fresh course directory with the labs' sources, config file and released labs."""
    source_root = source_root or default_source_root()
    labs = labs or [lab for lab in lab_ids() if (source_root / lab).is_dir()]
    if not labs:
        raise ConfigError(f"no lab sources found under {source_root}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "nbgrader_config.py").write_text(_CONFIG_FILE.format(course_id=course_id))
    course = Course(root.resolve(), course_id)
    for lab in labs:
        dest = root / "source" / lab
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(source_root / lab, dest)
        course.generate_assignment(lab)
    return course
