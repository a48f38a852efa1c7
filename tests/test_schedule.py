"""A course's calendar: due dates into nbgrader's gradebook, extensions on the submission
before the late penalty, Canvas assignment ids in the export."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest
from nbformat.v4 import new_notebook
from nbgrader.api import Gradebook
from nbgrader.preprocessors import AssignLatePenalties

from autograder.cli import main
from autograder.course import Course, create_course
from autograder.errors import ConfigError
from autograder.grading.late import GrantExtension
from autograder.rubric import load_rubric
from autograder.schedule import apply_due_dates, load_schedule

pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")

LAB = "lab3_mnist_dense"
SCHEDULE = f"""
[{LAB}]
opens = 2026-12-01T09:00:00+01:00
due = 2026-12-08T23:00:00+01:00
canvas_id = 4711
"""
DUE_UTC = datetime(2026, 12, 8, 22, 0)  # as nbgrader stores it: naive UTC
POLICY = "per_day = 10\nmax_percent = 50\n"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[lab9]\ndue = 2026-12-08T23:00:00Z\n", "no lab 'lab9'"),
        (f"[{LAB}]\nclosing = 2026-12-08T23:00:00Z\n", "unknown key closing"),
        (f"[{LAB}]\ndue = 2026-12-08T23:00:00\n", "with its offset"),
        (f"[{LAB}]\ndue = 2026-12-08\n", "with its offset"),
        (f"[{LAB}]\nopens = 2026-12-09T00:00:00Z\ndue = 2026-12-08T00:00:00Z\n", "due before"),
        (f"[{LAB}]\ncanvas_id = 'https://x'\n", "canvas_id must be a number"),
    ],
)
def test_a_bad_schedule_is_refused_with_its_reason(tmp_path, text, error):
    (tmp_path / "schedule.toml").write_text(text)
    with pytest.raises(ConfigError, match=error):
        load_schedule(tmp_path)


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> Course:
    course = create_course(tmp_path_factory.mktemp("schedule") / "course", labs=[LAB])
    (course.root / "schedule.toml").write_text(SCHEDULE)
    (course.root / "late_policy.toml").write_text(POLICY)
    return course


def _autograde_penalty(course: Course, student: str, submitted: datetime) -> None:
    """The two steps of autograde that decide lateness, with the course's configuration:
    the extension first (the order the pipeline checks), then nbgrader's penalty."""
    notebook = load_rubric(LAB).notebook
    with Gradebook(course.db_url) as gb:
        gb.update_or_create_student(student)
        gb.update_or_create_submission(LAB, student, timestamp=submitted)
    resources = {
        "nbgrader": {
            "notebook": notebook,
            "assignment": LAB,
            "student": student,
            "db_url": course.db_url,
        }
    }
    config = course.config()
    for step in (GrantExtension, AssignLatePenalties):
        step(config=config).preprocess(new_notebook(), resources)


def test_due_dates_reach_the_gradebook_and_an_extension_its_submission(course, capsys):
    assert main(["schedule", str(course.root)]) == 0
    assert f"{LAB}: due 2026-12-08 22:00 UTC" in capsys.readouterr().out
    with Gradebook(course.db_url) as gb:
        assert gb.find_assignment(LAB).duedate == DUE_UTC

    # 30 hours late: two started days. Nothing from the score yet (nothing scored), so the
    # penalty is checked through its recorded lateness and the extension.
    late = DUE_UTC + timedelta(hours=30)
    _autograde_penalty(course, "ada", late)
    assert main(["roster", "add", str(course.root), "grace"]) == 0
    assert main(["extend", str(course.root), "grace", LAB, "--hours", "48"]) == 0
    _autograde_penalty(course, "grace", late)
    with Gradebook(course.db_url) as gb:
        ada = gb.find_submission(LAB, "ada")
        grace = gb.find_submission(LAB, "grace")
        assert ada.extension is None and ada.total_seconds_late == 30 * 3600
        assert grace.extension == timedelta(hours=48) and grace.total_seconds_late == 0

    # taken back: the next autograde puts the lateness back
    assert main(["extend", str(course.root), "grace", LAB, "--hours", "0"]) == 0
    _autograde_penalty(course, "grace", late)
    with Gradebook(course.db_url) as gb:
        assert gb.find_submission(LAB, "grace").total_seconds_late == 30 * 3600


def test_extend_refuses_what_is_not_a_student_or_a_lab(course, capsys):
    assert main(["extend", str(course.root), "nobody", LAB, "--hours", "1"]) == 2
    assert "not on the course's roster" in capsys.readouterr().err
    assert main(["roster", "add", str(course.root), "ada"]) == 0
    capsys.readouterr()
    assert main(["extend", str(course.root), "Not A Name", LAB, "--hours", "1"]) == 2
    assert main(["extend", str(course.root), "ada", "lab9", "--hours", "1"]) == 2
    assert main(["extend", str(course.root), "ada", LAB, "--hours", "-3"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("autograder: error: ") for line in err)


def test_canvas_columns_carry_the_assignment_ids(course, tmp_path):
    assert apply_due_dates(course.root, course.db_url) == {LAB: DUE_UTC}
    out = tmp_path / "exports"
    assert main(["export", str(course.root), "--format", "canvas", "--out", str(out)]) == 0
    canvas = pd.read_csv(out / "canvas.csv", dtype=str)
    assert f"{LAB} (4711)" in canvas.columns
