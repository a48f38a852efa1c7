"""The class list: read from nbgrader's, Canvas' and Moodle's files, kept in the gradebook,
and carried into the exports."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from autograder.cli import main
from autograder.errors import ConfigError
from autograder.reports.export import export_gradebook
from autograder.roster import Person, apply_roster, drop_student, read_roster

# nbgrader's own add_submission, on a new gradebook, warns from SQLAlchemy's autoflush.
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")

ROSTERS = Path(__file__).parent / "fixtures" / "rosters"
LAB = "lab3_mnist_dense"
ADA = Person("ada", "Ada", "Lovelace", "ada@example.edu", "1001")


def test_nbgrader_columns():
    assert read_roster(ROSTERS / "nbgrader.csv") == [
        ADA,
        Person("grace", "Grace", "Hopper", "grace@example.edu", "1002"),
        Person("alan", "Alan", "Turing"),
    ]


def test_a_canvas_gradebook_export():
    # Excel's byte-order mark, the "Points Possible" row, "Last, First", logins in capitals,
    # and Canvas' own "Test Student" left out
    assert read_roster(ROSTERS / "canvas.csv") == [
        Person("ada", "Ada", "Lovelace", "", "1001"),
        Person("grace", "Grace", "Hopper", "", "1002"),
    ]


def test_a_moodle_export():
    assert read_roster(ROSTERS / "moodle.csv") == [
        ADA,
        Person("grace", "Grace", "Hopper", "grace@example.edu", ""),
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("name,mail\nada,a@b.c\n", "not a roster this grader reads"),
        ("id,first_name\nAda Lovelace,Ada\n", "line 2: 'ada lovelace'|line 2: 'Ada Lovelace'"),
        ("id,email\nada,not-an-address\n", "line 2: 'not-an-address' is not an e-mail"),
        ("id\nada\ngrace\nada\n", "line 4: ada is already on line 2"),
        ("id\n", "no students"),
        ("id\n../../etc\n", "cannot be an account name"),
    ],
)
def test_a_bad_roster_is_refused_whole_with_the_line(tmp_path, text, error):
    path = tmp_path / "roster.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error):
        read_roster(path)


def test_import_adds_then_updates_and_drop_keeps_grades(tmp_path):
    from nbgrader.api import Gradebook

    db_url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    first = apply_roster(db_url, read_roster(ROSTERS / "nbgrader.csv"))
    assert first.added == ("ada", "grace", "alan") and not first.updated
    again = apply_roster(db_url, read_roster(ROSTERS / "moodle.csv"))  # grace's LMS id gone
    assert again.unchanged == ("ada",) and again.updated == ("grace",)
    with pytest.raises(ConfigError, match="cannot be an account name"):
        apply_roster(db_url, [Person("Bad Name")])

    with Gradebook(db_url) as gb:
        gb.add_assignment(LAB)
        gb.add_submission(LAB, "ada")
    with pytest.raises(ConfigError, match=f"ada has submissions \\({LAB}\\)"):
        drop_student(db_url, "ada")
    drop_student(db_url, "alan")
    with pytest.raises(ConfigError, match="no student 'alan'"):
        drop_student(db_url, "alan")
    with Gradebook(db_url) as gb:
        assert sorted(s.id for s in gb.students) == ["ada", "grace"]
        assert gb.find_student("grace").lms_user_id is None


def test_course_init_with_a_roster_reaches_the_lms_exports(tmp_path, capsys):
    course = tmp_path / "course"
    argv = ["course", "init", str(course), "--lab", LAB, "--course-id", "dl-fall"]
    assert main([*argv, "--roster", str(ROSTERS / "nbgrader.csv")]) == 0
    assert "roster: 3 added" in capsys.readouterr().out
    assert "course_id='dl-fall'" in (course / "nbgrader_config.py").read_text()
    assert main(["roster", "add", str(course), "linus", "--first-name", "Linus"]) == 0
    assert main(["roster", "drop", str(course), "alan"]) == 0

    export_gradebook(course, ["canvas", "moodle"], tmp_path / "out")
    canvas = pd.read_csv(tmp_path / "out" / "canvas.csv", dtype=str).fillna("")
    rows = canvas[canvas["Student"].str.strip() != "Points Possible"].set_index("SIS Login ID")
    assert rows.loc["ada", "ID"] == "1001" and rows.loc["ada", "Student"] == "Lovelace, Ada"
    assert rows.loc["grace", "ID"] == "1002"
    moodle = pd.read_csv(tmp_path / "out" / "moodle.csv", dtype=str).fillna("")
    moodle = moodle.set_index("Username")
    assert moodle.loc["ada", "Email address"] == "ada@example.edu"
    assert moodle.loc["linus", "First name"] == "Linus"
    assert "alan" not in moodle.index


def test_a_bad_roster_leaves_no_course_behind(tmp_path, capsys):
    roster = tmp_path / "roster.csv"
    roster.write_text("id\nAda Lovelace\n")
    assert main(["course", "init", str(tmp_path / "course"), "--roster", str(roster)]) == 2
    assert "line 2" in capsys.readouterr().err
    assert not (tmp_path / "course").exists()
