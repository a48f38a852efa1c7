"""What a student's code leaves in a folder is walked and removed without recursion or links."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from autograder.fstree import copy_files, remove_tree, walk_tree, write_fresh


def _deep(top: Path, levels: int) -> None:
    """A chain of ``levels`` folders under ``top``, built with chdir (no long paths)."""
    here = os.getcwd()
    try:
        os.chdir(top)
        for _ in range(levels):
            os.mkdir("d")
            os.chdir("d")
        Path("leaf").write_text("x")
    finally:
        os.chdir(here)


def test_a_tree_deeper_than_recursion_and_path_limits_is_removed(tmp_path):
    levels = max(sys.getrecursionlimit(), 4096 // 2) + 500  # past both limits ("d/" is 2)
    top = tmp_path / "mess"
    top.mkdir()
    _deep(top, levels)
    assert remove_tree(top)
    assert not top.exists()


def test_links_are_removed_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    top = tmp_path / "mess"
    top.mkdir()
    (top / "to-outside").symlink_to(outside)
    (top / "to-root").symlink_to("/")
    (top / "loop").symlink_to(top / "loop")
    os.mkfifo(top / "fifo")
    locked = top / "locked"
    locked.mkdir()
    (locked / "x").write_text("x")
    locked.chmod(0)
    assert remove_tree(top)
    assert (outside / "keep").read_text() == "precious"
    assert remove_tree(tmp_path / "absent")  # nothing there: nothing to do


def test_walk_visits_without_entering_links_and_cuts_deep_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("x")
    (tmp_path / "link").symlink_to("/etc")
    _deep(tmp_path / "a", 40)
    seen: list[str] = []
    assert walk_tree(tmp_path, lambda p, st: seen.append(os.path.relpath(p, tmp_path)), max_depth=8)
    assert "link" in seen and not any(s.startswith("link/") for s in seen)
    assert max(s.count("/") for s in seen) <= 8
    assert not (tmp_path / "a" / Path(*["d"] * 10)).exists()  # deeper than 8: removed


def test_write_fresh_replaces_whatever_stands_at_the_path(tmp_path):
    squatted = tmp_path / "result.json"
    squatted.mkdir()
    (squatted / "inside").write_text("x")
    write_fresh(squatted, "{}")
    assert squatted.is_file() and squatted.read_text() == "{}"
    target = tmp_path / "target"
    target.write_text("mine")
    linked = tmp_path / "limit.json"
    linked.symlink_to(target)
    write_fresh(linked, "grader")
    assert not linked.is_symlink() and linked.read_text() == "grader"
    assert target.read_text() == "mine"  # the link's target untouched


def test_copy_files_takes_regular_files_only(tmp_path):
    source, target = tmp_path / "s", tmp_path / "t"
    source.mkdir()
    (source / "notebook.ipynb").write_text("{}")
    (source / "sub").mkdir()
    (source / "sub" / "x").write_text("x")
    (source / "link").symlink_to("/etc/passwd")
    os.mkfifo(source / "fifo")
    assert copy_files(source, target) == ["notebook.ipynb"]
    assert sorted(p.name for p in target.iterdir()) == ["notebook.ipynb"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make another account's files")
def test_another_accounts_unreadable_tree_is_removed_as_root(tmp_path):
    top = tmp_path / "mess"
    top.mkdir()
    _deep(top, 50)
    for root, dirs, files in os.walk(top, topdown=False):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), 65534, 65534)
            os.chmod(os.path.join(root, name), 0)
    assert remove_tree(top)
