"""Process-level set-up shared by the steps that drive nbgrader."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

__all__ = [
    "at_exit",
    "check_nbgrader_schema_once",
    "check_outputs_compiled",
    "compile_output_checks",
    "ensure_tool_path",
    "environment",
    "skip_iri_format_checks",
    "sqlite_file",
]


def at_exit(fn: Callable[[], object]) -> None:
    """Run ``fn`` when this process ends, a multiprocessing pool worker included: those end
    through multiprocessing's exit path, which skips ``atexit`` (``fn`` may run twice)."""
    import atexit
    from multiprocessing import util

    atexit.register(fn)
    util.Finalize(None, fn, exitpriority=10)


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """Set ``env`` in ``os.environ`` for the block, then restore what was there."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sqlite_file(db_url: str) -> Path | None:
    """The file of a SQLite gradebook's URL; None for any other database, or one in
    memory."""
    from sqlalchemy.engine import make_url

    database = make_url(db_url).database if db_url.startswith("sqlite:") else None
    return Path(database) if database and database != ":memory:" else None


def ensure_tool_path() -> None:
    """Put this interpreter's ``bin`` first on PATH.

    nbgrader shells out to ``alembic`` and starts kernels by name; run from a virtual
    environment that is not activated, neither would be found (or the wrong ones would).
    """
    bindir = str(Path(sys.executable).parent)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if parts[:1] != [bindir]:
        os.environ["PATH"] = os.pathsep.join([bindir, *[p for p in parts if p != bindir]])


def skip_iri_format_checks() -> None:
    """Leave jsonschema's optional IRI format checker unimported in a grading process.

    nbformat imports jsonschema, which imports ``rfc3987_syntax`` when installed (pulled in
    by jupyter-events) and so builds a Lark grammar: 1.1 s of CPU in every process that
    reads a notebook, for a format no notebook schema uses. jsonschema skips the checker
    when its import fails, which a ``None`` in ``sys.modules`` makes it do. Without effect
    once jsonschema is imported; kernels never run this.
    """
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


class _SchemaCheckedOnce:
    """``jsonschema`` as nbgrader's metadata validator calls it: ``validate(instance,
    schema)`` with the same outcome, the schema's own check and its validator made once
    per schema instead of for every cell, and compiled by fastjsonschema (as nbformat
    checks whole notebooks): what that refuses, or a schema it cannot compile, goes to
    jsonschema, which raises nbgrader's error."""

    def __init__(self, module: Any) -> None:
        import fastjsonschema

        self._module = module
        self._refused = fastjsonschema.JsonSchemaException
        self._validators: dict[str, tuple[Any, Callable[[Any], object] | None]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def validate(self, instance: Any, schema: Any, *args: Any, **kwargs: Any) -> None:
        if args or kwargs or not isinstance(schema, dict):
            return self._module.validate(instance, schema, *args, **kwargs)
        key = json.dumps(schema, sort_keys=True)
        if key not in self._validators:
            cls = self._module.validators.validator_for(schema)
            cls.check_schema(schema)
            self._validators[key] = (cls(schema), _compiled(schema))
        validator, compiled = self._validators[key]
        if compiled is not None:
            try:
                compiled(instance)
                return None
            except self._refused:
                pass
        error = self._module.exceptions.best_match(validator.iter_errors(instance))
        if error is not None:
            raise error
        return None


def _compiled(schema: dict[str, Any]) -> Callable[[Any], object] | None:
    import fastjsonschema

    try:
        # Only a check: fastjsonschema would write the schema's defaults into the metadata.
        check = fastjsonschema.compile(schema, use_default=False)
        return cast(Callable[[Any], object], check)
    except Exception:  # jsonschema then checks it all
        return None


def check_nbgrader_schema_once() -> None:
    """nbgrader validates each cell's metadata with ``jsonschema.validate``, which checks
    the schema itself against its meta-schema first, every time: 1.5 ms a cell, three
    passes per graded submission in a batch (0.1 s of its overhead). Its validator module is
    given a ``jsonschema`` that checks each schema once per process. Idempotent."""
    from nbgrader.nbgraderformat import common

    if not isinstance(common.jsonschema, _SchemaCheckedOnce):
        common.jsonschema = _SchemaCheckedOnce(common.jsonschema)


class _CompiledNodeCheck:
    """``nbformat.v4.nbbase.validate(node, ref)`` with each ``ref``'s part of the schema
    compiled once by fastjsonschema; a node it refuses (or a part it cannot compile) goes
    to nbformat's own check, which raises nbformat's error."""

    def __init__(self, original: Callable[..., None]) -> None:
        import fastjsonschema

        self.original = original
        self._refused = fastjsonschema.JsonSchemaException
        self._checks: dict[str, Callable[[Any], object] | None] = {}

    def __call__(self, node: Any, ref: str | None = None) -> None:
        if ref is None:
            return self.original(node, ref)
        check = self.compiled(ref)
        if check is not None:
            try:
                check(node)
                return None
            except self._refused:
                pass
        return self.original(node, ref)

    def compiled(self, ref: str) -> Callable[[Any], object] | None:
        if ref not in self._checks:
            self._checks[ref] = _compile_part(ref)
        return self._checks[ref]


# The parts nbformat's constructors check (``new_output``, ``new_code_cell`` and the like).
_NODE_REFS = (
    "stream",
    "display_data",
    "execute_result",
    "error",
    "code_cell",
    "markdown_cell",
    "raw_cell",
)


@functools.cache
def _node_schema() -> dict[str, Any]:
    """The schema nbbase validates against (the current minor version's), read once."""
    from nbformat.v4 import nbbase

    name = nbbase.nbformat_schema[(nbbase.nbformat, nbbase.nbformat_minor)]
    return cast(dict[str, Any], json.loads(Path(nbbase.__file__).with_name(name).read_bytes()))


def _compile_part(ref: str) -> Callable[[Any], object] | None:
    """The check of the schema's ``definitions/<ref>``."""
    import fastjsonschema

    schema = _node_schema()
    part = {
        "$schema": schema.get("$schema", "http://json-schema.org/draft-04/schema#"),
        "definitions": schema["definitions"],
        "$ref": f"#/definitions/{ref}",
    }
    try:
        return cast(Callable[[Any], object], fastjsonschema.compile(part))
    except Exception:  # nbformat's own check then does it all
        return None


def check_outputs_compiled() -> None:
    """nbformat checks each output it makes from a kernel's message (``new_output``, for
    nbclient) against its part of the notebook schema through jsonschema: 0.3 ms an output,
    some 55 in a graded lab notebook. Compiled once per part by fastjsonschema instead, as
    nbformat itself checks whole notebooks: the same schema, and what it refuses still fails
    with nbformat's error. Idempotent."""
    from nbformat.v4 import nbbase

    if not isinstance(nbbase.validate, _CompiledNodeCheck):
        nbbase.validate = _CompiledNodeCheck(nbbase.validate)


def compile_output_checks() -> None:
    """:func:`check_outputs_compiled`, with every part's check compiled now (1-9 ms
    each), in a batch worker's warm-up rather than in the submissions whose outputs come
    first."""
    from nbformat.v4 import nbbase

    check_outputs_compiled()
    check = cast(_CompiledNodeCheck, nbbase.validate)
    for ref in _NODE_REFS:
        check.compiled(ref)
