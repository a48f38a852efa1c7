"""Student releases: ``source/<lab>`` -> ``release/<lab>`` with nbgrader's generate_assignment."""

from __future__ import annotations

import filecmp
import shutil
import tempfile
from pathlib import Path

from autograder._runtime import ensure_tool_path
from autograder.errors import ConfigError
from autograder.rubric import check_notebook_against_rubric, lab_ids, load_rubric

__all__ = ["generate_release", "release_drift"]


def generate_release(
    source_root: Path, release_root: Path, labs: list[str] | None = None
) -> list[str]:
    """Regenerate the student versions of ``labs`` (default: every lab with a source folder),
    all in one scratch course: one gradebook and one nbgrader, not one per lab."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    chosen = labs or [lab for lab in lab_ids() if (source_root / lab).is_dir()]
    for lab in chosen:
        if not (source_root / lab).is_dir():
            raise ConfigError(f"no source folder {source_root / lab}")
        rubric = load_rubric(lab)
        check_notebook_against_rubric(source_root / lab / f"{rubric.notebook}.ipynb", rubric)
    ensure_tool_path()
    with tempfile.TemporaryDirectory(prefix="autograder-release-") as tmp:
        course = Path(tmp)
        config = Config()
        config.CourseDirectory.root = str(course)
        config.CourseDirectory.db_url = f"sqlite:///{course / 'gradebook.db'}"
        api = NbGraderAPI(config=config)
        for lab in chosen:
            shutil.copytree(source_root / lab, course / "source" / lab)
            result = api.generate_assignment(lab, force=True, create=True)
            if not result["success"]:
                raise ConfigError(
                    f"nbgrader generate_assignment {lab} failed: {_last_error(result)}"
                )
            target = release_root / lab
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(course / "release" / lab, target)
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
