"""The gradebook on PostgreSQL: the same code path as SQLite, one database per course."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from postgres import create_database, postgres_server

from autograder.cli import main
from autograder.course import Course, create_course
from autograder.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")

LAB = "lab3_mnist_dense"
ROSTER = Path(__file__).parent / "fixtures" / "rosters" / "nbgrader.csv"


@pytest.fixture(scope="module")
def server():
    with postgres_server() as url_base:
        yield url_base


def test_two_courses_on_one_server_one_database_each(server, tmp_path, capsys):
    shared = create_database(server, "shared")
    a = create_course(tmp_path / "a", course_id="dl-a", labs=[LAB], db_url=shared)
    assert Course.open(a.root).db_url == shared  # written into its config, read back as data

    # A second course in the same database would take the first one's lab over: refused,
    # and the first course's lab is still its own.
    with pytest.raises(ConfigError, match="this gradebook holds course 'dl-a'"):
        create_course(tmp_path / "b", course_id="dl-b", labs=[LAB], db_url=shared)
    from nbgrader.api import Gradebook

    with Gradebook(shared) as gb:
        assert [(x.name, x.course_id) for x in gb.assignments] == [(LAB, "dl-a")]

    # Its own database on the same server: the commands work as on SQLite.
    own = create_database(server, "dl_b")
    argv = ["course", "init", str(tmp_path / "b"), "--course-id", "dl-b", "--lab", LAB]
    assert main([*argv, "--db-url", own, "--roster", str(ROSTER)]) == 0
    assert main(["roster", "import", str(a.root), str(ROSTER)]) == 0
    assert main(["roster", "drop", str(a.root), "alan"]) == 0
    for course, students in (
        (a.root, ["ada", "grace"]),
        (tmp_path / "b", ["ada", "alan", "grace"]),
    ):
        out = course / "exports"
        assert main(["export", str(course), "--format", "moodle", "--out", str(out)]) == 0
        assert sorted(pd.read_csv(out / "moodle.csv", dtype=str)["Username"]) == students
    assert not list(tmp_path.glob("*/gradebook.db"))  # no SQLite file made on the side


_TA = """
import sys, time, pathlib
from nbgrader.api import Gradebook
db, lab, notebook, stop = sys.argv[1], sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4])
writes = 0
while not stop.exists():  # what the formgrader's grade handler does, again and again
    with Gradebook(db) as gb:
        for student, score in (("s1", 1.5), ("s2", 2.0)):
            grade = gb.find_grade("scaling_answer", notebook, lab, student)
            grade.manual_score = score
            grade.needs_manual_grade = False
        gb.db.commit()
    writes += 1
    time.sleep(0.05)
print(writes)
"""


@pytest.mark.slow
def test_a_ta_grades_by_hand_while_the_batch_grades(server, tmp_path, staged_data, repo):
    """The formgrader's writes (a TA grading written answers) and the batch's (autograding
    new submissions) on one PostgreSQL gradebook at the same time: nothing is lost."""
    import os
    import subprocess
    import sys

    from nbgrader.api import Gradebook

    from autograder.authoring.examples import example_path
    from autograder.batch.scheduling import grade_batch
    from autograder.rubric import load_rubric

    lab = "lab3_boston_regression"
    notebook = load_rubric(lab).notebook
    course = create_course(tmp_path / "c", labs=[lab], db_url=create_database(server, "busy"))
    # The TA's two: the released notebook as fetched (its written answer to grade by hand;
    # nothing trains). Then one new submission per worker, trained while the TA writes.
    for student in ("s1", "s2"):
        course.submit(student, lab, repo / "release" / lab / f"{notebook}.ipynb")
    assert grade_batch(course.root, workers=2, progress=False).count("graded") == 2
    for student in ("s3", "s4"):
        course.submit(student, lab, example_path(lab, "correct"))

    stop = tmp_path / "stop"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ta = subprocess.Popen(
        [sys.executable, "-c", _TA, course.db_url, lab, notebook, str(stop)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        summary = grade_batch(course.root, workers=2, progress=False)
    finally:
        stop.touch()
        out, err = ta.communicate(timeout=120)
    assert ta.returncode == 0, err[-2000:]
    assert int(out) > 10  # the TA kept writing while the batch ran
    assert (summary.count("graded"), summary.count("skipped"), summary.count("failed")) == (2, 2, 0)
    with Gradebook(course.db_url) as gb:
        for student, score in (("s1", 1.5), ("s2", 2.0)):
            grade = gb.find_grade("scaling_answer", notebook, lab, student)
            assert (grade.manual_score, grade.needs_manual_grade) == (score, False)
        for student in ("s3", "s4"):
            assert gb.find_submission(lab, student).code_score > 0
