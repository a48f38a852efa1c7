"""The package's shape: no import cycles, each stage imports only the stages below it, and
every module says what it exports. Imports inside functions count: they defer a cycle to
run time, they do not remove it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from autograder.settings import PACKAGE_DIR

# Folder (or top-level module) -> what it may import besides itself and the foundation
# (errors, settings, results, rubric, fstree, procstat, _runtime), which imports only itself. In
# pipeline order: data < sandbox < grading < reports < course < batch < authoring < hub < cli.
FOUNDATION = {"errors", "settings", "results", "rubric", "fstree", "procstat", "_runtime"}
MAY_IMPORT: dict[str, set[str]] = {
    "data": set(),
    "sandbox": {"data"},
    "grading": {"data", "sandbox"},
    "reports": {"grading"},
    "course": {"grading", "reports"},
    "batch": {"data", "sandbox", "grading", "course", "course_lock"},
    "authoring": {"data", "grading", "reports", "course", "batch"},
    "hub": {"data", "sandbox", "grading", "reports", "course", "course_lock", "roster", "schedule"},
    "course_lock": set(),  # who writes a course's grades, and when
    "roster": set(),  # the class list, into the gradebook
    "schedule": {"grading", "roster"},  # the course's dates and extensions
    "cli": {
        "data",
        "grading",
        "reports",
        "course",
        "roster",
        "schedule",
        "batch",
        "authoring",
        "hub",
    },
    "checks": {"grading"},  # the student-side self_check
    "datasets": {"data"},  # the student-side loaders
    "__main__": {"cli"},
    "__init__": set(),
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        rel = path.relative_to(PACKAGE_DIR)
        if rel.parts[0] == "examples":
            continue
        parts = ["autograder", *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from package import module` imports the module; `from module import name` the module
            targets = [
                f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module
                for a in node.names
            ]
        else:
            continue
        out |= {t for t in targets if t in modules and t != name}
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _stage(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def test_the_graph_sees_imports_inside_functions():
    graph = _graph()
    # cli imports every command's module inside the command's function
    assert "autograder.batch.scheduling" in graph["autograder.cli"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_each_stage_imports_only_the_stages_below_it():
    wrong = []
    for module, imported in sorted(_graph().items()):
        stage = _stage(module)
        allowed = FOUNDATION if stage in FOUNDATION else {stage} | FOUNDATION | MAY_IMPORT[stage]
        wrong += [f"{module} -> {dep}" for dep in sorted(imported) if _stage(dep) not in allowed]
    assert wrong == []


def _exporting() -> list[str]:
    """Every module but the entry point and the folders' docstring-only markers."""
    return sorted(
        name
        for name, path in _modules().items()
        if path.name != "__main__.py"
        and not (path.name == "__init__.py" and "import" not in path.read_text())
    )


@pytest.mark.parametrize("module", _exporting())
def test_every_module_declares_its_public_names(module):
    path = _modules()[module]
    names = {
        t.id
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Name)
    }
    assert "__all__" in names, f"{path} has no __all__"


def test_a_grading_process_leaves_the_unused_iri_format_checker_unimported():
    """A worker reads notebooks with nbformat (jsonschema): without the IRI format checker,
    which costs a second of CPU in every process to build a grammar no notebook uses."""
    import subprocess
    import sys

    code = (
        "import sys, autograder.batch.worker, nbformat, jsonschema\n"
        "from nbformat.v4 import new_notebook\n"
        "nbformat.validate(new_notebook())\n"
        "print(sys.modules.get('rfc3987_syntax'), 'iri' in jsonschema.FormatChecker().checkers)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "False"]


def test_a_worker_takes_its_evaluations_results_without_the_evaluations_modules(tmp_path):
    """A worker hands the capture to its evaluator and reads back the result: the modules
    that evaluate (checks, metrics, evidence) are the evaluator's, and importing them in
    the worker would land in its first submission's time. Only a failed evaluation needs
    one of them, to say why."""
    import subprocess
    import sys

    from autograder.grading.evaluate import failed_result
    from autograder.grading.evaluation_child import RESULT
    from autograder.rubric import load_rubric

    lab = "lab3_mnist_dense"
    (tmp_path / RESULT).write_text(failed_result(load_rubric(lab), "unknown", "x").to_json())
    code = (
        "import io, sys, types, autograder.batch.worker\n"
        "from autograder.grading.evaluation_server import Evaluator\n"
        'reply = io.StringIO(\'{"status": "ok", "exit": 0}\\n\')\n'
        "proc = types.SimpleNamespace(stdout=reply)\n"
        f"result = Evaluator(({lab!r},))._result(proc, True, {lab!r}, "
        f"__import__('pathlib').Path({str(tmp_path)!r}), 60, False)\n"
        "print(type(result).__name__, sorted(m for m in sys.modules if 'grading.' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("GradingResult "), out
    for module in ("evaluate", "checks", "metrics", "evidence", "scoring"):
        assert f"'autograder.grading.{module}'" not in out.stdout, out.stdout
