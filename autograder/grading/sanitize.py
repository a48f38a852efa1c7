"""What a student wrote, made inert before any staff or feedback page renders it.

The formgrader shows the autograded notebook through nbconvert's HTMLExporter, and feedback
is rendered from it the same way: markdown passes raw HTML and ``javascript:`` links on,
and HTML, JavaScript, SVG and widget outputs, attachments and metadata reach the page as
they are. :func:`neutralise_notebook` keeps what a grader reads (text, formatting, tables,
code, PNG/JPEG/GIF images) and nothing that runs:

- a markdown or raw cell is rendered as nbconvert renders it and checked against the
  allow-list below. A cell that passes stays exactly as written (``3 > 2``, ``> quote``,
  links to https pages). Otherwise its source becomes that rendering cleaned by bleach, or
  failing that the escaped source in a ``<pre>``. Only PNG/JPEG/GIF attachments stay;
- outputs keep text, PNG/JPEG/GIF, JSON and LaTeX, and HTML or markdown as checked HTML;
  JavaScript, SVG, widgets and other types go. Output metadata keeps numeric image sizes;
- MathJax commands that make links or styles (``\\href``, ``\\style``...) become ``\\text``;
- cell metadata keeps nbgrader's, safe tags and view flags, and ids nbformat would refuse
  are replaced; notebook metadata keeps nbgrader's and the kernel's and language's.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from functools import lru_cache
from html.parser import HTMLParser
from itertools import count
from typing import Any, ClassVar

from bleach.css_sanitizer import CSSSanitizer
from bleach.sanitizer import Cleaner
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
from nbformat import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor, SaveAutoGrades

__all__ = ["NeutraliseStudentContent", "clean_html", "neutralise_notebook"]

IMAGES = ("image/png", "image/jpeg", "image/gif")
_BASE64 = r"[A-Za-z0-9+/=\s]*"
# Pygments' token classes and the few nbconvert's markdown and pandas use; none that the
# pages' scripts look for (mermaid's diagrams, the formgrader's buttons).
_CLASS = r"(?:[a-z][a-z0-9]{0,2}|highlight|anchor-link|task-list-item(?:-checkbox)?|dataframe)"
# fmt: off
# Everything nbconvert's markdown makes, and the HTML graders need to read.
TAGS = frozenset([
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "dd", "del", "div", "dl", "dt",
    "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "input", "ins", "kbd", "li",
    "ol", "p", "pre", "s", "small", "span", "strong", "sub", "sup", "table", "tbody", "td",
    "tfoot", "th", "thead", "tr", "u", "ul",
])
# attribute: (the tags it may be on, None for any; what its whole value must match)
_ATTRIBUTES: dict[str, tuple[str | None, str]] = {
    "alt": (None, r".*"), "title": (None, r".*"),
    "href": ("a", r"(?i:https?://|mailto:|#).*"),
    "src": ("img", rf"data:image/(png|jpeg|gif);base64,{_BASE64}|(?i:https?://|attachment:).*"),
    "class": ("a code div input li pre span table", rf"\s*({_CLASS}(\s+{_CLASS})*)?\s*"),
    "id": ("h1 h2 h3 h4 h5 h6", r"\S{1,200}"),  # nbconvert's heading anchors
    "width": ("img", "[0-9]{1,5}"), "height": ("img", "[0-9]{1,5}"),
    "colspan": ("td th", "[0-9]{1,3}"), "rowspan": ("td th", "[0-9]{1,3}"),
    "style": ("th td tr", "text-align: ?(left|right|center);?"),  # table columns
    "type": ("input", "checkbox"), "checked": ("input", ""), "disabled": ("input", ""),
}
# fmt: on
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_META_TEXT = re.compile(r"[A-Za-z0-9_ .+()/-]{0,100}")
# MathJax commands that make links, classes, ids or styles or load code or fonts.
_MATH_UNSAFE = re.compile(
    r"\\(href|url|class|cssId|style|bbox|mmlToken|require|unicode|data)(?![A-Za-z])"
)
# Elements whose content is code, not text: removed whole before bleach strips tags.
_CODE_ELEMENTS = re.compile(r"<(script|style)\b.*?</\1\s*>", re.I | re.S)
_ENTITY = re.compile(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")


def _attribute(tag: str, name: str, value: str) -> bool:
    """Whether ``name="value"`` may stay on ``tag`` (for bleach and for the check)."""
    tags, pattern = _ATTRIBUTES.get(name, ("", "(?!)"))
    return (tags is None or tag in tags.split()) and bool(re.fullmatch(pattern, value, re.S))


_CLEANER = Cleaner(
    tags=TAGS,
    attributes=_attribute,
    protocols=["http", "https", "mailto", "data", "attachment"],
    strip=True,
    strip_comments=True,
    css_sanitizer=CSSSanitizer(allowed_css_properties=["text-align"]),  # else style=""
)


def clean_html(text: str) -> str:
    """``text`` with only the allow-listed tags and attributes, no comments, entities
    decoded once and MathJax's link and style commands made ``\\text``."""
    cleaned = _CLEANER.clean(_CODE_ELEMENTS.sub("", text))
    # An entity can spell a backslash that MathJax would read: decode, re-escape.
    cleaned = _ENTITY.sub(lambda m: html.escape(html.unescape(m.group())), cleaned)
    return _MATH_UNSAFE.sub(r"\\text", cleaned)


class _Check(HTMLParser):
    """Whether HTML holds only the allow-list. It parses as the exporter's last step does
    (BeautifulSoup's html.parser re-serialises every page): what passes is what browsers get."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.ok, self.text = True, ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ok &= tag in TAGS and all(_attribute(tag, k, v or "") for k, v in attrs)
        self.text += " "  # MathJax reads each text run apart

    def handle_endtag(self, tag: str) -> None:
        self.text += " "

    def handle_data(self, data: str) -> None:
        self.ok &= "<" not in data  # markup the parser gave up on; a browser may not
        self.text += data

    def handle_entityref(self, name: str) -> None:
        self.text += html.unescape(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self.text += html.unescape(f"&#{name};")

    def unknown_decl(self, data: str) -> None:
        self.ok = False  # comments, CDATA, declarations: parsers disagree on where they end

    handle_comment = handle_pi = unknown_decl

    def handle_decl(self, decl: str) -> None:
        self.ok = False


def _safe(page: str) -> bool:
    check = _Check()
    try:
        check.feed(page)
        check.close()
    except Exception:  # markup html.parser cannot take (nor, then, the exporter)
        return False
    return check.ok and not _MATH_UNSAFE.search(check.text)


def _markdown(source: str, attachments: dict[str, Any]) -> str:
    # As HTMLExporter.markdown2html renders a cell (the formgrader's and feedback's too).
    renderer = IPythonRenderer(escape=False, attachments=attachments)
    return MarkdownWithMath(renderer=renderer).render(source)


def _made_safe(text: str, render: Callable[[str], str]) -> str:
    """``text`` itself if what it renders to passes the check, else the cleaned rendering,
    else ``text`` escaped. Each passes when neutralised again, so stays as it is."""
    escaped = "<pre>" + html.escape(_MATH_UNSAFE.sub(r"\\text", text)) + "</pre>"
    for candidate in (lambda: text, lambda: clean_html(render(text)), lambda: escaped):
        try:
            value = candidate()
            if _safe(render(value)):
                return value
        except Exception:  # a missing attachment, say: the next candidate
            continue
    return ""


@lru_cache(maxsize=1024)
def _safe_markdown(text: str) -> str:
    """``_made_safe`` for markdown without attachments, rendered once per text in a
    process: the lab's own cells come back in every submission of a class."""
    return _made_safe(text, _plain_markdown)


@lru_cache(maxsize=1024)
def _plain_markdown(text: str) -> str:
    return _markdown(text, {})


def _text(source: Any) -> str:
    return "".join(source) if isinstance(source, list) else str(source)


def _base64(value: Any) -> bool:
    return isinstance(value, str) and bool(re.fullmatch(_BASE64, value))


def _text_cell(cell: NotebookNode) -> None:
    images: dict[str, Any] = {}
    for name, bundle in (cell.pop("attachments", None) or {}).items():
        kept = {m: v for m, v in dict(bundle or {}).items() if m in IMAGES and _base64(v)}
        if kept:
            images[name] = kept
    if images:
        cell["attachments"] = images
    markdown = cell.get("cell_type") == "markdown"
    source = _text(cell.get("source", ""))
    if markdown and not images:
        made = _safe_markdown(source)
    else:
        made = _made_safe(source, (lambda s: _markdown(s, images)) if markdown else str)
    if made != source:
        cell["source"] = made


def _count(value: Any) -> int | None:
    # Templates print execution counts as they are; the kernel (the student) reports them.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _sizes(meta: Any) -> dict[str, Any]:
    # Templates write width and height unquoted into <img>.
    items = meta.items() if isinstance(meta, dict) else ()
    return {k: v for k, v in items if k in ("width", "height") and _count(v) is not None}


def _output(output: NotebookNode) -> None:
    kind = output.get("output_type")
    if kind == "stream" and output.get("name") not in ("stdout", "stderr"):
        output["name"] = "stdout"
    if kind == "execute_result":
        output["execution_count"] = _count(output.get("execution_count"))
    if kind not in ("display_data", "execute_result"):
        return  # streams and errors: text, escaped by every template
    data = output.get("data", {})
    kept: dict[str, Any] = {}
    for mime, value in data.items():
        if (mime in IMAGES and _base64(_text(value))) or mime in ("text/plain", "application/json"):
            kept[mime] = value
        elif mime == "text/latex":
            kept[mime] = _MATH_UNSAFE.sub(r"\\text", _text(value))
    shown = _text(data.get("text/html", ""))
    if "text/markdown" in data and "text/html" not in data:  # HTML: templates don't check it
        shown = _plain_markdown(_safe_markdown(_text(data["text/markdown"])))
    shown = shown if _safe(shown) else clean_html(shown)
    if shown and _safe(shown):
        kept["text/html"] = shown
    dropped = sorted(set(data) - set(kept) - {"text/html", "text/markdown"})
    if dropped and "text/plain" not in kept:
        kept["text/plain"] = f"[output not shown to graders: {', '.join(dropped)}]"
    output["data"] = kept
    meta = output.get("metadata", {})
    output["metadata"] = _sizes(meta) | {m: _sizes(meta[m]) for m in kept if _sizes(meta.get(m))}


def _cell_metadata(cell: NotebookNode) -> None:
    meta = cell.get("metadata", {})
    kept: dict[str, Any] = {}
    grading = meta.get("nbgrader")
    # Templates put the grade id into attributes; nbgrader never makes one outside _ID.
    if isinstance(grading, dict) and _ID.fullmatch(str(grading.get("grade_id", "x"))):
        kept["nbgrader"] = grading
    if isinstance(meta.get("tags"), list):
        kept["tags"] = [t for t in meta["tags"] if isinstance(t, str) and _ID.fullmatch(t)]
    for key in ("collapsed", "deletable", "editable", "scrolled"):
        if isinstance(meta.get(key), bool) or (key == "scrolled" and meta.get(key) == "auto"):
            kept[key] = meta[key]
    if isinstance(meta.get("jupyter"), dict):
        kept["jupyter"] = {k: v for k, v in meta["jupyter"].items() if isinstance(v, bool)}
    if re.fullmatch(r"[a-z]+/[a-z0-9.+-]+", str(meta.get("raw_mimetype"))):
        kept["raw_mimetype"] = meta["raw_mimetype"]
    cell["metadata"] = kept


def _plain(value: Any, depth: int = 2) -> Any:
    """Numbers, flags and short safe strings, in dictionaries ``depth`` deep; else None."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if _META_TEXT.fullmatch(value) else None
    if isinstance(value, dict) and depth:
        kept = {k: _plain(v, depth - 1) for k, v in value.items() if _META_TEXT.fullmatch(str(k))}
        return {k: v for k, v in kept.items() if v is not None}
    return None


def _notebook_metadata(nb: NotebookNode) -> None:
    meta = nb.get("metadata", {})
    kept: dict[str, Any] = {"nbgrader": meta["nbgrader"]} if "nbgrader" in meta else {}
    for key, required in (("kernelspec", {"name", "display_name"}), ("language_info", {"name"})):
        value = _plain(meta.get(key))
        if isinstance(value, dict) and required <= value.keys():  # as nbformat requires
            kept[key] = value
    nb["metadata"] = kept


def _cell_ids(cells: list[NotebookNode]) -> None:
    def valid(cell_id: Any) -> bool:
        return isinstance(cell_id, str) and bool(_ID.fullmatch(cell_id))

    taken = {c["id"] for c in cells if valid(c.get("id"))}
    seen: set[Any] = set()
    for n, cell in enumerate(cells):
        if "id" in cell and (not valid(cell["id"]) or cell["id"] in seen):
            cell["id"] = next(i for k in count() if (i := f"cell-{n}-{k}") not in taken)
            taken.add(cell["id"])
        seen.add(cell.get("id"))  # nbformat < 4.5 has none


def neutralise_notebook(nb: NotebookNode) -> NotebookNode:
    """Make ``nb`` safe to render for staff and students (in place); returns it."""
    _notebook_metadata(nb)
    _cell_ids(nb.get("cells", []))
    for cell in nb.get("cells", []):
        _cell_metadata(cell)
        if cell.get("cell_type") in ("markdown", "raw"):
            _text_cell(cell)
        elif cell.get("cell_type") == "code":
            cell["execution_count"] = _count(cell.get("execution_count"))
            for output in cell.get("outputs", []):
                _output(output)
    return nb


class NeutraliseStudentContent(NbGraderPreprocessor):
    """The autograded notebook made safe to render. pipeline.py runs it after the grades
    were taken from what the student wrote."""

    # The grades are taken from what the student wrote; only then is it made inert.
    runs_after: ClassVar[tuple[type, ...]] = (SaveAutoGrades,)
    runs_before: ClassVar[tuple[type, ...]] = ()

    def preprocess(self, nb: NotebookNode, resources: Any) -> tuple[NotebookNode, Any]:
        return neutralise_notebook(nb), resources
