"""Example submissions, built from each lab's release by declarative edits of answer cells.

A submission is the student's release notebook with its solution cells filled in. The
correct example fills them with the instructor's solution; every other example replaces
some answers, declared as data in ``labs/<lab>.examples.toml``. Tampering examples may also
delete cells (``delete_cells``), rewrite the source of locked cells such as the visible
tests (``edit_cells``) or give cells outputs of their own (``forge_outputs``).
``build_examples`` writes them under ``autograder/examples/<lab>/``; a test fails when
they drift.
"""

from __future__ import annotations

import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat.v4 import new_output

from autograder.errors import ConfigError
from autograder.rubric import load_rubric
from autograder.settings import EXAMPLES_DIR, LABS_DIR

__all__ = [
    "EXAMPLES",
    "Example",
    "build_examples",
    "example_path",
    "examples_dir",
    "examples_drift",
]

_SOLUTION = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?", re.M)


@dataclass(frozen=True)
class Example:
    description: str
    answers: dict[str, str] = field(default_factory=dict)  # grade_id -> cell source
    # Hangs, hoards memory or reaches for the network on purpose: grade it under tight
    # limits (autograder.settings.Limits), or the production limits make it cost half an hour.
    adversarial: bool = False
    delete_cells: tuple[str, ...] = ()  # grade_ids of cells removed from the notebook
    edit_cells: dict[str, str] = field(default_factory=dict)  # grade_id -> new source
    forge_outputs: dict[str, str] = field(default_factory=dict)  # grade_id -> printed text


_KEYS = {"description", "answers", "adversarial", "delete_cells", "edit_cells", "forge_outputs"}


_LABS = LABS_DIR


def _load_examples() -> dict[str, dict[str, Example]]:
    """Every ``labs/<lab>.examples.toml``: example name -> description and answers."""
    out: dict[str, dict[str, Example]] = {}
    for path in sorted(_LABS.glob("*.examples.toml")):
        lab = path.name.removesuffix(".examples.toml")
        out[lab] = {}
        for name, table in tomllib.loads(path.read_text()).items():
            unknown = set(table) - _KEYS
            if unknown:
                raise ConfigError(f"{path.name} [{name}]: unknown key(s) {', '.join(unknown)}")
            adversarial = table.get("adversarial", False)
            if not isinstance(adversarial, bool):
                raise ConfigError(f"{path.name} [{name}]: adversarial must be true or false")
            answers = {k: v.strip("\n") for k, v in table.get("answers", {}).items()}
            out[lab][name] = Example(
                table["description"],
                answers,
                adversarial,
                tuple(table.get("delete_cells", ())),
                {k: v.strip("\n") for k, v in table.get("edit_cells", {}).items()},
                dict(table.get("forge_outputs", {})),
            )
    return out


EXAMPLES: dict[str, dict[str, Example]] = _load_examples()


def examples_dir() -> Path:
    return EXAMPLES_DIR


def example_path(lab: str, name: str) -> Path:
    return examples_dir() / lab / f"{name}.ipynb"


def _solutions(source_nb: nbformat.NotebookNode) -> dict[str, str]:
    out = {}
    for cell in source_nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            out[meta["grade_id"]] = _SOLUTION.sub("", cell.source).strip("\n")
    return out


def build_examples(
    source_root: Path,
    release_root: Path,
    out_root: Path | None = None,
    labs: list[str] | None = None,
) -> list[Path]:
    """Write every example notebook, and remove those no examples file declares any more;
    return the paths written."""
    out_root = out_root or examples_dir()
    written = []
    for lab in labs or sorted(EXAMPLES):
        for stale in sorted((out_root / lab).glob("*.ipynb")):
            if stale.stem not in EXAMPLES[lab]:
                stale.unlink()
        notebook = load_rubric(lab).notebook + ".ipynb"
        solutions = _solutions(nbformat.read(source_root / lab / notebook, as_version=4))
        release = release_root / lab / notebook
        for name, example in EXAMPLES[lab].items():
            unknown = set(example.answers) - set(solutions)
            if unknown:
                raise ValueError(f"{lab}/{name}: no solution cell {', '.join(sorted(unknown))}")
            nb = nbformat.read(release, as_version=4)
            _tamper_check(lab, name, example, nb, solutions)
            for cell in nb.cells:
                meta = cell.metadata.get("nbgrader", {})
                gid = meta.get("grade_id")
                if meta.get("solution"):
                    cell.source = example.answers.get(gid, solutions[gid])
                if gid in example.edit_cells:
                    cell.source = example.edit_cells[gid]
                if gid in example.forge_outputs:
                    text = example.forge_outputs[gid]
                    cell.outputs = [new_output("stream", name="stdout", text=text)]
                    cell.execution_count = 1
            nb.cells = [
                c
                for c in nb.cells
                if c.metadata.get("nbgrader", {}).get("grade_id") not in example.delete_cells
            ]
            path = out_root / lab / f"{name}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, path)
            written.append(path)
    return written


def examples_drift(
    source_root: Path, release_root: Path, examples_root: Path | None = None
) -> list[str]:
    """Example notebooks that differ from a fresh build, are missing, or that no examples
    file declares; empty when in sync. Only the labs ``source_root`` holds are built."""
    examples_root = examples_root or examples_dir()
    labs = [lab for lab in sorted(EXAMPLES) if (source_root / lab).is_dir()]
    with tempfile.TemporaryDirectory(prefix="autograder-examples-") as tmp:
        fresh = Path(tmp)
        build_examples(source_root, release_root, out_root=fresh, labs=labs)
        drift = []
        for lab in labs:
            built = {p.name: p for p in (fresh / lab).glob("*.ipynb")}
            kept = {p.name: p for p in (examples_root / lab).glob("*.ipynb")}
            drift += [
                f"{lab}/{name} (not declared in {lab}.examples.toml)"
                for name in kept.keys() - built.keys()
            ]
            drift += [f"{lab}/{name} (missing)" for name in built.keys() - kept.keys()]
            drift += [
                f"{lab}/{name}"
                for name in built.keys() & kept.keys()
                if built[name].read_bytes() != kept[name].read_bytes()
            ]
        undeclared = {p.name for p in examples_root.iterdir() if p.is_dir()} - set(EXAMPLES)
        drift += [f"{lab}/ (no {lab}.examples.toml)" for lab in sorted(undeclared)]
        return sorted(drift)


def _tamper_check(
    lab: str, name: str, example: Example, nb: nbformat.NotebookNode, solutions: dict[str, str]
) -> None:
    """Cells named by the tampering keys must exist; answers are edited with ``answers``."""
    ids = {c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells} - {None}
    named = {*example.delete_cells, *example.edit_cells, *example.forge_outputs}
    unknown = named - ids
    if unknown:
        raise ValueError(f"{lab}/{name}: no cell {', '.join(sorted(unknown))}")
    answers = set(example.edit_cells) & set(solutions)
    if answers:
        raise ValueError(f"{lab}/{name}: edit answer cells with `answers`: {sorted(answers)}")
