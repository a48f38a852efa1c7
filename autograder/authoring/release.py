"""Student releases: ``source/<lab>`` -> ``release/<lab>`` with nbgrader's generate_assignment."""

from __future__ import annotations

import filecmp
import shutil
import tempfile
from pathlib import Path

import nbformat

from autograder._runtime import ensure_tool_path
from autograder.errors import ConfigError
from autograder.rubric import Rubric, lab_ids, load_rubric

__all__ = ["check_notebook_against_rubric", "generate_release", "release_drift"]


def check_notebook_against_rubric(notebook: Path, rubric: Rubric) -> None:
    """Every autograded test cell is a rubric check with the same points, every cell graded
    by hand a ``manual`` entry of the rubric, and vice versa."""
    nb = nbformat.read(notebook, as_version=4)
    cells: dict[str, float] = {}
    by_hand: dict[str, float] = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade") and not meta.get("solution") and cell.cell_type == "code":
            cells[meta["grade_id"]] = float(meta.get("points", 0))
        elif meta.get("grade"):
            by_hand[meta["grade_id"]] = float(meta.get("points", 0))
    checks = {c.id: c.points for c in rubric.checks}
    problems = []
    manual = {m.id: m.points for m in rubric.manual}
    if by_hand != manual:
        problems.append(
            f"cells graded by hand {by_hand or 'none'}, the rubric's manual {manual or 'none'}"
        )
    for gid in sorted(set(cells) - set(checks)):
        problems.append(f"test cell {gid} has no check in the rubric")
    for gid in sorted(set(checks) - set(cells)):
        problems.append(f"rubric check {gid} has no test cell in the notebook")
    for gid in sorted(set(cells) & set(checks)):
        if cells[gid] != checks[gid]:
            problems.append(
                f"{gid}: the cell gives {cells[gid]:g} points, the rubric {checks[gid]:g}"
            )
    if problems:
        raise ConfigError(
            f"{notebook.name} disagrees with labs/{rubric.lab}.toml: " + "; ".join(problems)
        )


def _generate(source_root: Path, lab: str, out_root: Path) -> None:
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    ensure_tool_path()
    rubric = load_rubric(lab)
    check_notebook_against_rubric(source_root / lab / f"{rubric.notebook}.ipynb", rubric)
    with tempfile.TemporaryDirectory(prefix="autograder-release-") as tmp:
        course = Path(tmp)
        shutil.copytree(source_root / lab, course / "source" / lab)
        config = Config()
        config.CourseDirectory.root = str(course)
        config.CourseDirectory.db_url = f"sqlite:///{course / 'gradebook.db'}"
        api = NbGraderAPI(config=config)
        result = api.generate_assignment(lab, force=True, create=True)
        if not result["success"]:
            raise ConfigError(f"nbgrader generate_assignment {lab} failed: {_last_error(result)}")
        target = out_root / lab
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(course / "release" / lab, target)


def generate_release(
    source_root: Path, release_root: Path, labs: list[str] | None = None
) -> list[str]:
    """Regenerate the student versions of ``labs`` (default: every lab with a source folder)."""
    chosen = labs or [lab for lab in lab_ids() if (source_root / lab).is_dir()]
    for lab in chosen:
        if not (source_root / lab).is_dir():
            raise ConfigError(f"no source folder {source_root / lab}")
        _generate(source_root, lab, release_root)
    return chosen


def release_drift(source_root: Path, release_root: Path) -> list[str]:
    """Files of ``release_root`` that differ from a fresh generation; empty when in sync."""
    with tempfile.TemporaryDirectory(prefix="autograder-drift-") as tmp:
        fresh = Path(tmp)
        labs = generate_release(source_root, fresh)
        drift = []
        for lab in labs:
            cmp = filecmp.dircmp(fresh / lab, release_root / lab)
            stack = [(cmp, Path(lab))]
            while stack:
                d, rel = stack.pop()
                drift += [str(rel / f) for f in d.left_only + d.right_only + d.diff_files]
                drift += [str(rel / f) for f in d.funny_files]
                stack += [(sub, rel / name) for name, sub in d.subdirs.items()]
            if not (release_root / lab).is_dir():
                drift.append(lab)
        return sorted(drift)


def _last_error(result: dict[str, str]) -> str:
    """nbgrader's API returns whole logs; keep the line that names the problem."""
    lines = [
        ln
        for ln in (result.get("log", "") + "\n" + result.get("error", "")).splitlines()
        if "error" in ln.lower() and ln.strip()
    ]
    return lines[0].strip() if lines else "see nbgrader's log"
