"""Collect's copy of a submission folder: what a student may put in ``inbound`` and what not.

The same rules hold on the real hub, where students' own accounts make the folders
(tests/test_hub.py::test_collect_refuses_what_students_cannot_submit)."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import pytest

from autograder.hub.exchange import MAX_DEPTH, Refused, copy_submission, submission_time


def _submission(root: Path) -> Path:
    src = root / "student+lab+2020-01-01 00:00:00.000000 UTC"
    (src / "data").mkdir(parents=True)
    (src / "lab.ipynb").write_text("{}")
    (src / "data" / "notes.txt").write_text("mine")
    (src / "timestamp.txt").write_text("2020-01-01 00:00:00.000000 UTC")  # forged
    return src


def test_a_plain_folder_is_copied_and_dated_by_its_change_time(tmp_path):
    before = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    src = _submission(tmp_path)
    when = copy_submission(str(src), str(tmp_path / "out"), os.getuid())
    assert (tmp_path / "out" / "data" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "out" / "lab.ipynb").read_text() == "{}"
    # The student's timestamp says 2020; the files changed just now.
    assert when >= before - datetime.timedelta(seconds=2)
    assert when == submission_time(str(src), os.getuid())


def test_touching_a_file_later_moves_the_time_forward_never_back(tmp_path):
    src = _submission(tmp_path)
    first = submission_time(str(src))
    time.sleep(0.05)
    os.utime(src / "lab.ipynb", (0, 0))  # mtime set to 1970: ctime moves to now
    assert submission_time(str(src)) > first


@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        ("link", "is a link"),
        ("dangling", "is a link"),
        ("fifo", "is a fifo"),
        ("other_owner", "belongs to another account"),
        ("deep", f"nested more than {MAX_DEPTH} deep"),
    ],
)
def test_links_special_files_and_other_accounts_files_refuse_the_folder(tmp_path, shape, reason):
    src = _submission(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("held-out")
    if shape == "link":
        (src / "data" / "heldout.npz").symlink_to(secret)
    elif shape == "dangling":
        (src / "gone").symlink_to(tmp_path / "nothing-here")
    elif shape == "fifo":
        os.mkfifo(src / "data" / "pipe")
    elif shape == "other_owner":
        os.chown(src / "data" / "notes.txt", 65534, 65534)
    else:
        deep = src
        for _ in range(MAX_DEPTH + 2):
            deep = deep / "d"
        deep.mkdir(parents=True)
    with pytest.raises(Refused, match=reason):
        copy_submission(str(src), str(tmp_path / "out"), os.getuid())
    assert not (tmp_path / "out").exists()  # nothing half-copied is left


def test_the_folder_itself_must_be_a_folder_of_the_student(tmp_path):
    src = _submission(tmp_path)
    link = tmp_path / "student+lab+2030-01-01 00:00:00.000000 UTC"
    link.symlink_to(src)
    with pytest.raises(Refused, match="is a link, not a folder"):
        submission_time(str(link), os.getuid())
    with pytest.raises(Refused, match="belongs to another account"):
        submission_time(str(src), 65534)
