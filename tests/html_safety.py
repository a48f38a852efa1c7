"""Whether a rendered page holds anything of a student's that could run in a browser.

Every payload a test plants carries a marker; the page's own scripts (the formgrader's,
nbconvert's, JupyterLab's) do not, so only what came from the student is reported."""

from __future__ import annotations

import base64
import binascii
import re
from html.parser import HTMLParser

__all__ = ["student_script_findings"]

_SCRIPT_URL = re.compile(r"(javascript|vbscript|data:text/html)", re.IGNORECASE)
_BASE64_URL = re.compile(r"data:[^,]*;base64,(.*)", re.IGNORECASE | re.DOTALL)
# Elements that load, embed or redirect: any of the marker's in their attributes counts.
_EMBEDS = {"iframe", "object", "embed", "base", "meta", "link", "form", "script", "style"}
_FOREIGN = {"svg", "math"}  # inside these, any attribute can animate or link
_TEXT_ONLY = {"alt", "title"}  # attributes a browser shows, never runs


def _squeeze(value: str) -> str:
    # Browsers ignore whitespace and control characters inside a URL's scheme.
    return re.sub(r"[\x00-\x20]", "", value)


def _decoded(value: str) -> str:
    """``value`` and, for a base64 data URL, what it encodes (the marker may hide there)."""
    match = _BASE64_URL.match(_squeeze(value))
    if match is None:
        return value
    try:
        return value + base64.b64decode(match.group(1) + "==").decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return value


def _around(text: str, marker: str) -> str:
    at = text.find(marker)
    return repr(text[max(at - 40, 0) : at + len(marker) + 20])


class _Finder(HTMLParser):
    def __init__(self, marker: str) -> None:
        super().__init__(convert_charrefs=True)
        self.marker = marker
        self.found: list[str] = []
        self.in_script = False
        self.foreign = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.in_script |= tag == "script"
        self.foreign += tag in _FOREIGN
        for name, raw in attrs:
            value = _decoded(raw or "")
            if self.marker not in value:
                continue
            where = f"<{tag} {name}={_around(value, self.marker)}>"
            if name.startswith("on"):
                self.found.append(f"event handler {where}")
            elif name not in _TEXT_ONLY and _SCRIPT_URL.match(_squeeze(value)):
                self.found.append(f"script URL {where}")
            elif name in ("srcdoc", "style"):
                self.found.append(f"{name} {where}")
            elif tag in _EMBEDS or (self.foreign and name not in _TEXT_ONLY):
                self.found.append(f"embedding element {where}")  # <meta> refresh included

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag != "script":
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.in_script = False
        if tag in _FOREIGN and self.foreign:
            self.foreign -= 1

    def handle_data(self, data: str) -> None:
        if self.in_script and self.marker in data:
            self.found.append(f"script {_around(data, self.marker)}")

    def handle_comment(self, data: str) -> None:
        # Markup in comments or declarations: browsers may end them sooner than this parser.
        if self.marker in data:
            self.found.append(f"comment {_around(data, self.marker)}")

    def unknown_decl(self, data: str) -> None:
        self.handle_comment(data)

    def handle_decl(self, decl: str) -> None:
        self.handle_comment(decl)

    def handle_pi(self, data: str) -> None:
        self.handle_comment(data)


def student_script_findings(page: str, marker: str) -> list[str]:
    """Scripts, event handlers, script URLs, embedding elements and hidden markup that
    carry ``marker``, as short descriptions; none: nothing of the student's can run."""
    finder = _Finder(marker)
    finder.feed(page)
    finder.close()
    return finder.found
