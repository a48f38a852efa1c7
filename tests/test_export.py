"""Gradebook exports, read back with pandas and checked against nbgrader's gradebook.

No notebook runs here: the course is released for real (nbgrader generate_assignment),
then scores, timestamps and a due date are written through nbgrader's Gradebook API, late
penalties are stored by nbgrader's own AssignLatePenalties with the course's config, and
written answers are graded the way the formgrader does it.
"""

from __future__ import annotations

import math
import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from nbformat.v4 import new_notebook
from nbgrader.api import Gradebook
from nbgrader.preprocessors import AssignLatePenalties

from autograder.cli import main
from autograder.course import Course, create_course
from autograder.errors import ConfigError
from autograder.grading.late import LatePolicy, load_late_policy
from autograder.reports.export import CANVAS_ID_COLUMNS, MOODLE_ID_COLUMNS, export_gradebook
from autograder.reports.gradebook import check_table, read_gradebook
from autograder.rubric import load_rubric

# nbgrader's own add_submission makes SQLAlchemy warn about its autoflush; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")

MNIST = "lab3_mnist_dense"
BOSTON = "lab3_boston_regression"
DUE = datetime(2026, 3, 1, 12, 0)
POLICY = "per_day = 10\nmax_percent = 50\ngrace_minutes = 15\n"

STUDENTS = {
    "ada": {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.org"},
    "bob": {},  # no name, no email: the id stands in
    "cy@example.org": {"first_name": "Cy"},  # a hub login that is an email
}
# (lab, student): submitted at, automatic scores per check. Missing: mnist/cy, boston/bob.
SUBMISSIONS = {
    (MNIST, "ada"): (
        datetime(2026, 3, 1, 11, 0),
        {"check_architecture": 3, "check_compile": 1, "check_inputs": 2, "check_accuracy": 4},
    ),
    # 30 h late: 2 started days, 20 % of 7.5 = 1.5
    (MNIST, "bob"): (
        datetime(2026, 3, 2, 18, 0),
        {"check_architecture": 3, "check_compile": 0, "check_inputs": 2, "check_accuracy": 2.5},
    ),
    # 10 min late: within the 15 min of grace
    (BOSTON, "ada"): (
        datetime(2026, 3, 1, 12, 10),
        {
            "check_normalisation": 2,
            "check_architecture": 2,
            "check_compile": 1,
            "check_callbacks": 1,
            "check_mae": 3,
            "check_comparison": 1,
        },
    ),
    # 50 h late: 3 started days, 30 % of 5.5 = 1.65; written answer not graded yet
    (BOSTON, "cy@example.org"): (
        datetime(2026, 3, 3, 14, 0),
        {
            "check_normalisation": 2,
            "check_architecture": 0,
            "check_compile": 1,
            "check_callbacks": 0,
            "check_mae": 1.5,
            "check_comparison": 1,
        },
    ),
}
WRITTEN = "scaling_answer"  # boston's written answer, 2 points, graded by hand


def grade_by_hand(course: Course, lab: str, student: str, cell: str, score: float) -> None:
    """What the formgrader's grade API handler does when a TA saves a score."""
    with Gradebook(course.db_url) as gb:
        grade = gb.find_grade(cell, load_rubric(lab).notebook, lab, student)
        grade.manual_score = score
        grade.needs_manual_grade = False
        gb.db.commit()


def assign_late_penalties(course: Course, lab: str, student: str) -> None:
    """nbgrader's AssignLatePenalties step of autograde, with the course's configuration."""
    resources = {
        "nbgrader": {
            "notebook": load_rubric(lab).notebook,
            "assignment": lab,
            "student": student,
            "db_url": course.db_url,
        }
    }
    AssignLatePenalties(config=course.config()).preprocess(new_notebook(), resources)


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> Course:
    course = create_course(tmp_path_factory.mktemp("export") / "course", labs=[MNIST, BOSTON])
    (course.root / "late_policy.toml").write_text(POLICY)
    with Gradebook(course.db_url) as gb:
        for lab in (MNIST, BOSTON):
            gb.update_or_create_assignment(lab, duedate=DUE)
        for sid, info in STUDENTS.items():
            gb.update_or_create_student(sid, **info)
        for (lab, sid), (stamp, scores) in SUBMISSIONS.items():
            sub = gb.update_or_create_submission(lab, sid, timestamp=stamp)
            for nb in sub.notebooks:
                for grade in nb.grades:
                    if grade.name in scores:  # what SaveAutoGrades stores
                        grade.auto_score = scores[grade.name]
                        grade.needs_manual_grade = False
            gb.db.commit()
    for lab, sid in SUBMISSIONS:
        assign_late_penalties(course, lab, sid)
    grade_by_hand(course, BOSTON, "ada", WRITTEN, 1.5)
    return course


@pytest.fixture
def own_course(course: Course, tmp_path: Path) -> Course:
    """A copy to change (grading by hand, refreshing penalties) without touching the others'."""
    shutil.copytree(course.root, tmp_path / "course")
    return Course((tmp_path / "course").resolve(), course.course_id)


@pytest.fixture(scope="module")
def exported(course: Course, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out")
    result = export_gradebook(course.root, ["all"], out)
    assert {p.name for p in result.files} == {
        "grades.csv",
        "grades.xlsx",
        "canvas.csv",
        "moodle.csv",
        "summary.csv",
        "distribution.png",
    }
    return out


def by_student(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    return frame.set_index(column, drop=False)


# -- late policy ------------------------------------------------------------------------


def test_late_policy_counts_started_days_after_grace_and_caps() -> None:
    policy = LatePolicy(per_day=10, max_percent=50, grace_minutes=15)
    hour = 3600
    assert policy.penalty(8.0, 0) == 0
    assert policy.penalty(8.0, 14 * 60) == 0  # within grace
    assert policy.penalty(8.0, 16 * 60) == pytest.approx(0.8)  # a started day
    assert policy.penalty(7.5, 30 * hour) == pytest.approx(1.5)  # two started days
    assert policy.penalty(10.0, 30 * 24 * hour) == pytest.approx(5.0)  # capped at 50 %
    assert LatePolicy().penalty(10.0, 30 * 24 * hour) == 0  # the default takes nothing


def test_late_policy_file_is_validated(tmp_path: Path) -> None:
    assert load_late_policy(tmp_path) == LatePolicy()  # no file: no penalty
    path = tmp_path / "late_policy.toml"
    path.write_text(POLICY)
    assert load_late_policy(tmp_path) == LatePolicy(10, 50, 15)
    for text, message in [
        ("per_day = 10\nper_dya = 5\n", "unknown key(s) per_dya"),
        ("per_day = true\n", "'per_day' must be a number"),
        ("per_day = -1\n", "'per_day' must be >= 0"),
        ("max_percent = 150\n", "'max_percent' must be between 0 and 100"),
        ("per_day = \n", "not valid TOML"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_late_policy(tmp_path)
        assert ConfigError.exit_code == 2


def test_nbgrader_stores_the_policy_penalty(course: Course) -> None:
    """apply_course_config wires PolicyPenalty into AssignLatePenalties, reading the course's
    late_policy.toml from the configured root (the test runs elsewhere)."""
    assert Path.cwd() != course.root
    assert (
        course.config().AssignLatePenalties.plugin_class == "autograder.grading.late.PolicyPenalty"
    )
    with Gradebook(course.db_url) as gb:
        stored = {
            (lab, sid): gb.find_submission(lab, sid).late_submission_penalty
            for lab, sid in SUBMISSIONS
        }
    assert stored == {
        (MNIST, "ada"): 0.0,
        (MNIST, "bob"): pytest.approx(1.5),
        (BOSTON, "ada"): 0.0,  # within grace
        (BOSTON, "cy@example.org"): pytest.approx(1.65),
    }


# -- formats ----------------------------------------------------------------------------


def test_csv_has_every_check_total_penalty_and_manual_grade(course: Course, exported: Path) -> None:
    grades = by_student(pd.read_csv(exported / "grades.csv"), "student")
    assert list(grades["student"]) == ["bob", "cy@example.org", "ada"]  # by displayed name
    assert grades.loc["ada", "email"] == "ada@example.org"
    assert grades.loc["cy@example.org", "email"] == "cy@example.org"
    assert pd.isna(grades.loc["bob", "email"])

    # Every graded cell of every submission, as nbgrader's Gradebook has it.
    with Gradebook(course.db_url) as gb:
        for lab, sid in SUBMISSIONS:
            for nb in gb.find_submission(lab, sid).notebooks:
                for grade in nb.grades:
                    value = grades.loc[sid, f"{lab}/{grade.name}"]
                    if grade.auto_score is None and grade.manual_score is None:
                        assert pd.isna(value), (lab, sid, grade.name)
                    else:
                        assert value == pytest.approx(grade.score), (lab, sid, grade.name)

    assert grades.loc["ada", f"{BOSTON}/{WRITTEN}"] == 1.5  # graded by hand
    row = grades.loc["bob"]
    assert row[f"{MNIST}/raw total"] == 7.5
    assert row[f"{MNIST}/late by (h)"] == 30
    assert row[f"{MNIST}/penalty"] == pytest.approx(1.5)
    assert row[f"{MNIST}/final"] == pytest.approx(6.0)
    assert row[f"{MNIST}/status"] == "graded"
    assert row[f"{BOSTON}/status"] == "missing"
    assert pd.isna(row[f"{BOSTON}/raw total"]) and row[f"{BOSTON}/final"] == 0
    cy = grades.loc["cy@example.org"]
    assert cy[f"{BOSTON}/status"] == "needs manual grade"
    assert cy[f"{BOSTON}/raw total"] == 5.5 and cy[f"{BOSTON}/final"] == pytest.approx(3.85)
    assert grades.loc["ada", f"{BOSTON}/late by (h)"] == pytest.approx(10 / 60, abs=0.01)
    assert grades.loc["ada", f"{BOSTON}/penalty"] == 0

    totals = {"ada": 21.5, "bob": 6.0, "cy@example.org": 3.85}
    assert grades["total"].to_dict() == pytest.approx(totals)
    assert set(grades["max"]) == {22.0}
    assert grades.loc["ada", "percent"] == pytest.approx(round(100 * 21.5 / 22, 2))

    # The per-(student, lab) terminal table reads the same snapshot: same raw totals.
    table = check_table(course.db_url, include_missing=False)
    for rec in table.itertuples():
        assert grades.loc[rec.student, f"{rec.lab}/raw total"] == pytest.approx(rec.total)


def test_xlsx_holds_the_same_grades_summary_and_points(exported: Path) -> None:
    sheets = pd.read_excel(exported / "grades.xlsx", sheet_name=None)
    assert list(sheets) == ["grades", "summary", "points possible"]
    pd.testing.assert_frame_equal(
        sheets["grades"], pd.read_csv(exported / "grades.csv"), check_dtype=False
    )
    pd.testing.assert_frame_equal(
        sheets["summary"], pd.read_csv(exported / "summary.csv"), check_dtype=False
    )
    points = sheets["points possible"].set_index("column")["points"]
    assert points[f"{MNIST}/check_accuracy"] == 4
    assert points[f"{BOSTON}/{WRITTEN}"] == 2
    assert points[f"{BOSTON}/final"] == 12 and points["total"] == 22


def test_canvas_import_layout(exported: Path) -> None:
    canvas = pd.read_csv(exported / "canvas.csv", dtype={"ID": str, "SIS User ID": str})
    assert list(canvas.columns) == [*CANVAS_ID_COLUMNS, BOSTON, MNIST]
    points = canvas.iloc[0]
    assert points["Student"].strip() == "Points Possible"
    assert (points[BOSTON], points[MNIST]) == (12, 10)
    rows = by_student(canvas.iloc[1:], "SIS Login ID")
    assert list(rows["Student"]) == ["bob", "Cy", "Lovelace, Ada"]
    assert rows.loc["bob", MNIST] == pytest.approx(6.0)  # after the late penalty
    assert rows.loc["bob", BOSTON] == 0  # missing
    assert pd.isna(rows.loc["cy@example.org", BOSTON])  # written answer not graded yet
    assert rows.loc["ada", BOSTON] == 11.5  # includes the hand-graded answer
    assert rows.loc["ada", MNIST] == 10


def test_moodle_import_layout(exported: Path) -> None:
    moodle = by_student(pd.read_csv(exported / "moodle.csv"), "Username")
    assert list(moodle.columns) == [*MOODLE_ID_COLUMNS, BOSTON, MNIST]
    assert moodle.loc["ada", "Email address"] == "ada@example.org"
    assert moodle.loc["bob", "Last name"] == "bob"  # no name in nbgrader: the id
    assert moodle.loc["bob", MNIST] == pytest.approx(6.0)
    assert moodle.loc["bob", BOSTON] == 0
    assert pd.isna(moodle.loc["cy@example.org", BOSTON])
    assert moodle.loc["ada", BOSTON] == 11.5


def test_summary_statistics_and_distribution_plot(exported: Path) -> None:
    import matplotlib.image

    summary = pd.read_csv(exported / "summary.csv").set_index("lab")
    mnist, boston = summary.loc[MNIST], summary.loc[BOSTON]
    assert (mnist["points"], mnist["count"], mnist["missing"], mnist["late"]) == (10, 2, 1, 1)
    assert mnist["mean"] == mnist["median"] == pytest.approx(8.0)  # 10 and 6.0
    assert mnist["sd"] == pytest.approx(math.sqrt(8), abs=1e-4)
    assert (mnist["min"], mnist["max"], mnist["full_marks"]) == (6.0, 10.0, 0.5)
    assert (boston["count"], boston["missing"], boston["needs_manual_grade"]) == (2, 1, 1)
    assert boston["mean"] == pytest.approx((11.5 + 3.85) / 2)
    assert boston["sd"] == pytest.approx((11.5 - 3.85) / math.sqrt(2), abs=1e-4)
    assert boston["full_marks"] == 0

    png = exported / "distribution.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 2 * 200  # one panel per lab
    assert image.std() > 0  # not a blank canvas


# -- manual grading after autograde -----------------------------------------------------


def test_manual_grade_reaches_export_and_refresh_reapplies_the_policy(
    own_course: Course, tmp_path: Path
) -> None:
    grade_by_hand(own_course, BOSTON, "cy@example.org", WRITTEN, 2.0)

    result = export_gradebook(own_course.root, ["csv", "canvas"], tmp_path / "a")
    grades = by_student(pd.read_csv(tmp_path / "a" / "grades.csv"), "student")
    cy = grades.loc["cy@example.org"]
    assert cy[f"{BOSTON}/{WRITTEN}"] == 2.0
    assert cy[f"{BOSTON}/status"] == "graded"
    assert cy[f"{BOSTON}/raw total"] == 7.5
    # nbgrader's stored penalty is still the one computed at autograde (30 % of 5.5) ...
    assert cy[f"{BOSTON}/penalty"] == pytest.approx(1.65)
    canvas = by_student(pd.read_csv(tmp_path / "a" / "canvas.csv").iloc[1:], "SIS Login ID")
    assert canvas.loc["cy@example.org", BOSTON] == pytest.approx(7.5 - 1.65)
    # ... and the export says so.
    (stale,) = [w for w in result.warnings if "stored late penalty" in w]
    assert stale.startswith(f"{BOSTON}/cy@example.org:") and "gives 2.25" in stale

    result = export_gradebook(own_course.root, ["csv"], tmp_path / "b", refresh_penalties=True)
    assert result.refreshed == 1
    assert not [w for w in result.warnings if "stored late penalty" in w]
    grades = by_student(pd.read_csv(tmp_path / "b" / "grades.csv"), "student")
    assert grades.loc["cy@example.org", f"{BOSTON}/penalty"] == pytest.approx(2.25)
    assert grades.loc["cy@example.org", f"{BOSTON}/final"] == pytest.approx(5.25)
    assert grades.loc["bob", f"{MNIST}/penalty"] == pytest.approx(1.5)  # unchanged
    # nbgrader itself now stores the refreshed figure.
    snap = read_gradebook(own_course.db_url)
    assert snap.record("cy@example.org", BOSTON).penalty == pytest.approx(2.25)


# -- command line -----------------------------------------------------------------------


def test_cli_export_writes_the_chosen_format_summary_and_plot(
    course: Course, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["export", str(course.root), "--format", "moodle", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "distribution.png",
        "moodle.csv",
        "summary.csv",
    ]
    text = capsys.readouterr().out
    assert f"wrote 3 files to {out}" in text
    assert "moodle.csv: no email for bob" in text


def test_cli_export_without_a_gradebook_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autograder: error: no gradebook at ")


@pytest.mark.slow
def test_real_autograde_stores_the_policy_penalty(
    tmp_path: Path, staged_data: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wiring end to end: `nbgrader autograde` of a late submission (untrained model,
    6 of 10 points, 30 h late) stores 20 % of 6 through PolicyPenalty; about 15 s."""
    from autograder.authoring.examples import example_path

    course = create_course(tmp_path / "course", labs=[MNIST])
    (course.root / "late_policy.toml").write_text("per_day = 10\n")
    with Gradebook(course.db_url) as gb:
        gb.update_or_create_assignment(MNIST, duedate=DUE)
    course.submit(
        "late", MNIST, example_path(MNIST, "untrained"), timestamp=SUBMISSIONS[MNIST, "bob"][0]
    )
    monkeypatch.chdir(tmp_path)  # the policy is found from the configured course root
    assert course.autograde(MNIST, "late")["success"]
    export_gradebook(course.root, ["csv"], tmp_path / "out")
    row = pd.read_csv(tmp_path / "out" / "grades.csv").iloc[0]
    assert row[f"{MNIST}/raw total"] == 6.0
    assert row[f"{MNIST}/penalty"] == pytest.approx(1.2)
    assert row[f"{MNIST}/final"] == pytest.approx(4.8)


def test_a_flag_set_in_the_formgrader_reaches_the_table_and_the_exports(
    own_course: Course, tmp_path: Path
) -> None:
    """nbgrader's own flag (the formgrader's toggle, or the grader's review): shown to staff
    in the gradebook table, grades.csv and summary.csv; not in the LMS files."""
    from autograder.reports.gradebook import format_table

    with Gradebook(own_course.db_url) as gb:
        gb.find_submission(MNIST, "bob").notebooks[0].flagged = True
        gb.db.commit()
    export_gradebook(own_course.root, ["all"], tmp_path)
    grades = by_student(pd.read_csv(tmp_path / "grades.csv"), "student")
    assert grades.loc["bob", f"{MNIST}/review"] == "flagged in the formgrader"
    assert pd.isna(grades.loc["ada", f"{MNIST}/review"])
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("lab")
    assert summary.loc[MNIST, "flagged"] == 1 and summary.loc[BOSTON, "flagged"] == 0
    for lms in ("canvas.csv", "moodle.csv"):
        assert "review" not in (tmp_path / lms).read_text().lower()
    table = check_table(own_course.db_url, [MNIST], course=own_course.root)
    row = table.set_index("student").loc["bob"]
    assert (row["status"], row["review"]) == ("graded", "flagged in the formgrader")
    text = format_table(table)
    assert "graded, flagged" in text and "review bob: flagged in the formgrader" in text
