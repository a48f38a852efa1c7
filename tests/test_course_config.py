"""A course's own nbgrader_config.py decides its id and gradebook, for every command, and
is read as data: parsed, never run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from autograder.cli import main
from autograder.course import Course, read_course_config
from autograder.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")

ROSTER = Path(__file__).parent / "fixtures" / "rosters" / "nbgrader.csv"
LAB = "lab3_mnist_dense"


def test_the_course_config_is_read_as_data_never_run(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "nbgrader_config.py").write_text(
        "import os\n"
        "from autograder.course import apply_course_config\n"
        "c = get_config()  # noqa\n"
        f"open({str(marker)!r}, 'w').write('the file ran')\n"
        "apply_course_config(c, root=os.path.dirname(__file__), course_id='dl-fall')\n"
        "c.CourseDirectory.db_url = 'postgresql+psycopg2://grader@db/dl'\n"
    )
    assert read_course_config(tmp_path) == {
        "course_id": "dl-fall",
        "db_url": "postgresql+psycopg2://grader@db/dl",
    }
    course = Course.open(tmp_path)
    assert (course.course_id, course.db_url) == ("dl-fall", "postgresql+psycopg2://grader@db/dl")
    assert not marker.exists()
    assert Course.open(tmp_path / "elsewhere").db_url.endswith("elsewhere/gradebook.db")


def test_a_setting_made_by_code_is_refused_with_its_line(tmp_path):
    (tmp_path / "nbgrader_config.py").write_text(
        "import os\nc = get_config()  # noqa\nc.CourseDirectory.db_url = os.environ['DB']\n"
    )
    with pytest.raises(ConfigError, match="line 3: db_url must be a plain string"):
        Course.open(tmp_path)


def test_commands_use_the_gradebook_the_course_config_names(tmp_path, capsys):
    course = Course((tmp_path / "course").resolve())
    course.root.mkdir()
    other = tmp_path / "shared" / "gradebook.db"
    other.parent.mkdir()
    (course.root / "nbgrader_config.py").write_text(
        "from autograder.course import apply_course_config\n"
        "c = get_config()  # noqa\n"
        f"apply_course_config(c, root={str(course.root)!r}, course_id='day2-dl')\n"
        f"c.CourseDirectory.db_url = 'sqlite:///{other}'\n"
    )
    assert Course.open(course.root).db_url == f"sqlite:///{other}"
    assert main(["roster", "import", str(course.root), str(ROSTER)]) == 0
    assert other.is_file()
    out = tmp_path / "exports"
    assert main(["export", str(course.root), "--format", "moodle", "--out", str(out)]) == 0
    moodle = pd.read_csv(out / "moodle.csv", dtype=str)
    assert sorted(moodle["Username"]) == ["ada", "alan", "grace"]
    assert not (course.root / "gradebook.db").exists()  # none made in the course folder
