"""Students' HTML, JavaScript, SVG and script URLs made inert in the autograded notebook,
rendered as nbconvert, nbgrader's feedback and the formgrader render it.

The same payloads go through a real hub in tests/test_hub.py::test_student_to_feedback."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from fixtures.adversarial.html_injection import BENIGN_PNG, MARKER, inject_html
from html_safety import student_script_findings
from nbclient import NotebookClient
from nbconvert.exporters import HTMLExporter
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output, new_raw_cell
from nbgrader.converters import GenerateFeedback
from nbgrader.coursedir import CourseDirectory
from nbgrader.server_extensions.formgrader.formgrader import FormgradeExtension

from autograder.grading.sanitize import NeutraliseStudentContent, clean_html, neutralise_notebook

GRADED = {"grade": True, "solution": True, "grade_id": "answer", "points": 2, "locked": False}


def _nbconvert(nb: nbformat.NotebookNode, tmp: Path) -> str:
    return HTMLExporter().from_notebook_node(nb)[0]


def _feedback(nb: nbformat.NotebookNode, tmp: Path) -> str:
    # The exporter as GenerateFeedback.start() builds it. GetGrades (it reads the gradebook)
    # is left out; what it would add to the cells and resources is given.
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade"):
            cell.metadata.nbgrader.update(score=1.0, comment="Good.")
    converter = GenerateFeedback(coursedir=CourseDirectory())
    exporter = converter.exporter_class(parent=converter, config=converter.config)
    exporter.register_preprocessor(CSSHTMLHeaderPreprocessor)
    grades = {"notebook": "lab", "score": 1.0, "max_score": 2.0, "late_penalty": 0}
    return exporter.from_notebook_node(nb, resources={"nbgrader": grades})[0]


def _formgrader(nb: nbformat.NotebookNode, tmp: Path) -> str:
    # The exporter as the formgrader extension configures it, called as SubmissionHandler
    # calls it: on the autograded file, with the resources the handler passes.
    exporter = HTMLExporter(config=FormgradeExtension().build_extra_config())
    path = tmp / "lab.ipynb"
    nbformat.write(nb, path)
    resources = {
        "assignment_id": "lab",
        "notebook_id": "lab",
        "submission_id": "1",
        "index": 0,
        "total": 1,
        "base_url": "/services/course",
        "student": "student1",
        "last_name": None,
        "first_name": None,
        "notebook_path": "/services/course/autograded/student1/lab/lab.ipynb",
    }
    return exporter.from_filename(str(path), resources=resources)[0]


# The payloads found in every page rendered from the notebook as the student left it.
REACHING_THE_PAGE = {str(n) for n in (*range(1, 9), 10, 11, 12, *range(15, 20), 22, 23, 25)}
REACHING_THE_PAGE.add("answer")
RENDERERS = {"nbconvert": _nbconvert, "feedback": _feedback, "formgrader": _formgrader}


@pytest.fixture(scope="module")
def executed() -> nbformat.NotebookNode:
    """A graded answer and the payload cells, the code run in a plain kernel as the
    student's would be."""
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nb.cells.append(new_markdown_cell("# Lab\n\nThe answer is 3 > 2 & so on."))
    answer = f"My answer. <img src=x onerror=\"alert('{MARKER}-answer')\">"
    nb.cells.append(new_markdown_cell(answer, metadata={"nbgrader": dict(GRADED)}))
    inject_html(nb)
    NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    return nb


def _render(renderer: str, nb: nbformat.NotebookNode, tmp: Path) -> str:
    return RENDERERS[renderer](copy.deepcopy(nb), tmp)


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_payloads_run_unless_neutralised(executed, renderer, tmp_path):
    raw = _render(renderer, executed, tmp_path)
    # Without neutralising the payloads reach the page, so this test can fail. (9: SVG, shown
    # as <img>; 13, 14: tags and title, escaped; 20, 21, 24, 26: MathJax and mermaid.)
    found = " ".join(student_script_findings(raw, MARKER))
    assert set(re.findall(rf"{MARKER}-(\w+)", found)) >= REACHING_THE_PAGE, found
    page = _render(renderer, neutralise_notebook(copy.deepcopy(executed)), tmp_path)
    assert student_script_findings(page, MARKER) == []
    # Neither MathJax's link commands nor mermaid's diagrams (which can link) are left.
    assert not re.search(rf"\\(href|url){{[^}}]*{MARKER}-2[01]", page)  # 26: in the code
    assert 'class="mermaid"' not in page
    assert "isolated-iframe" not in page
    # What a grader reads stays: text, the table, the images, the code, printed output.
    for kept in ("3 &gt; 2 &amp; so on", "My answer.", "BENIGN-TABLE", "Dense", "BENIGN-TEXT"):
        assert kept in page, kept
    assert "<table" in page and "Javascript" in page and "onerror" in page  # the code
    assert page.count(f"data:image/png;base64,{BENIGN_PNG}") == 2  # markdown's and output's


def test_idempotent_and_still_a_notebook(executed):
    once = neutralise_notebook(copy.deepcopy(executed))
    nbformat.validate(once)
    assert neutralise_notebook(copy.deepcopy(once)) == once


def test_markdown_seen_before_comes_out_as_it_did_the_first_time(executed):
    """Markdown without attachments is made safe once per text in a process (a lab's own
    cells come back in every submission of a class): the payloads seen again come out of
    the cache exactly as they did when first made safe."""
    from autograder.grading import sanitize

    sanitize._safe_markdown.cache_clear()
    first = neutralise_notebook(copy.deepcopy(executed))
    hits = sanitize._safe_markdown.cache_info().hits
    assert neutralise_notebook(copy.deepcopy(executed)) == first
    assert sanitize._safe_markdown.cache_info().hits > hits


def test_notebook_without_html_is_unchanged():
    png = {"image/png": BENIGN_PNG}
    cells = [
        new_markdown_cell("YOUR ANSWER HERE", metadata={"nbgrader": dict(GRADED)}),
        new_markdown_cell("The answer is 3 > 2 & so on.\n\n> a quote\n> of two lines"),
        new_markdown_cell("## Model (two layers)\n\n- [x] *Dense*, `relu`\n- see https://keras.io"),
        new_markdown_cell("| layer | units |\n|:--|--:|\n| Dense | 512 |\n\n$x^2 < 3$"),
        new_markdown_cell("```python\nmodel.fit(x, y)\n```\n\n![plot](attachment:p.png)"),
        new_raw_cell("raw text"),
        new_code_cell(
            "print(1)",
            execution_count=1,
            metadata={"tags": ["raises-exception"], "collapsed": False},
            outputs=[
                new_output("stream", text="1\n"),
                new_output(
                    "display_data",
                    data={"text/plain": "<Figure>", **png},
                    metadata={"image/png": {"width": 300}},
                ),
                new_output(
                    "execute_result",
                    execution_count=1,
                    data={"text/plain": "df", "text/html": "<table><tr><td>1</td></tr></table>"},
                ),
            ],
        ),
    ]
    cells[4]["attachments"] = {"p.png": png}
    language = {
        "name": "python",
        "version": "3.11.9",
        "mimetype": "text/x-python",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "file_extension": ".py",
        "pygments_lexer": "ipython3",
    }
    plain = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)"},
            "language_info": language,
            "nbgrader": {"__altered__": False},
        },
    )
    assert neutralise_notebook(copy.deepcopy(plain)) == plain
    # ... and a markdown blockquote still renders as one (nothing was escaped).
    assert "<blockquote>" in HTMLExporter().from_notebook_node(plain)[0]


def test_what_is_kept_and_what_is_dropped(executed):
    nb = neutralise_notebook(copy.deepcopy(executed))
    assert set(nb.metadata) == {"kernelspec", "language_info"}  # title, for one, is gone
    assert nb.cells[1].metadata == {"nbgrader": GRADED}  # nbgrader's own, untouched
    code = next(c for c in nb.cells if c.cell_type == "code")
    assert code.metadata == {"tags": []}  # the tag that carried an attribute is gone
    shown = [o for o in code.outputs if o.output_type == "display_data"]
    kinds = [sorted(o.data) for o in shown]
    assert all(set(k) <= {"text/plain", "text/html", "image/png", "text/latex"} for k in kinds)
    assert ["image/png", "text/plain"] in kinds and ["text/latex", "text/plain"] in kinds
    assert all(o.metadata == {} for o in shown)  # the width that carried a handler, too
    markdown = [o.data["text/html"] for o in shown if ">m</a>" in o.data.get("text/html", "")]
    assert [m.strip() for m in markdown] == ["<p><a>m</a></p>"]  # made HTML, inert
    assert "\\text{javascript:" in next(
        o.data["text/latex"] for o in shown if "text/latex" in o.data
    )
    svg = next(c for c in nb.cells if "attachment:evil.svg" in c.source)
    assert "attachments" not in svg and svg.source.startswith("<pre>")  # shown as text


def test_outputs_and_ids_from_a_kernel_that_lies():
    """Execution counts, stream names and cell ids come from the student's side."""
    cell = new_code_cell("x")
    cell.execution_count = f'<img src=x onerror="{MARKER}">'
    cell.outputs = [
        new_output("stream", name=f'x" onclick="{MARKER}', text="t"),
        nbformat.from_dict(
            {"output_type": "execute_result", "data": {}, "metadata": {}, "execution_count": "<b>"}
        ),
    ]
    cells = [cell, new_markdown_cell("a"), new_markdown_cell("b"), new_markdown_cell("c")]
    cells[0]["id"], cells[1]["id"], cells[2]["id"] = '"><script>', "cell-0-0", "cell-0-0"
    nb = new_notebook()
    nb.cells = cells
    nb = neutralise_notebook(nb)
    out = nb.cells[0]
    assert out.execution_count is None and out.outputs[1].execution_count is None
    assert out.outputs[0].name == "stdout"
    ids = [c.id for c in nb.cells]
    assert len(set(ids)) == 4 and ids[1] == "cell-0-0" and ids[3] == cells[3].id, ids
    nbformat.validate(nb)


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_markup_the_exporter_rejects(renderer, tmp_path):
    """A marked section html.parser refuses stops the exporter (so the formgrader's page and
    feedback); neutralised, the notebook renders."""
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nb.cells = [new_markdown_cell(f"<div>\n<![img {MARKER}]>\n</div>\n\nSTILL-HERE")]
    with pytest.raises(Exception, match="rejected by the parser"):
        _render(renderer, nb, tmp_path)
    assert "STILL-HERE" in _render(renderer, neutralise_notebook(nb), tmp_path)


def test_clean_html():
    assert clean_html('<b onclick="x">b</b><script>alert(1)</script>') == "<b>b</b>"
    assert clean_html('<a href="javascript:x">a</a> <a href="https://k.io">k</a>') == (
        '<a>a</a> <a href="https://k.io">k</a>'
    )
    assert clean_html("<p>$&#92;href{javascript:x}{y}$</p>") == "<p>$\\text{javascript:x}{y}$</p>"
    assert clean_html('<img src="data:image/svg+xml;base64,AA"><img src="https://x/y.png">') == (
        '<img><img src="https://x/y.png">'
    )


def test_as_a_pipeline_step(executed, tmp_path):
    nb = copy.deepcopy(executed)
    resources: dict[str, Any] = {}
    out, same = NeutraliseStudentContent().preprocess(nb, resources)
    assert out is nb and same is resources and same == {}
    assert student_script_findings(_render("feedback", out, tmp_path), MARKER) == []
    # After the grades are saved from what the student wrote, as the pipeline checks.
    from nbgrader.preprocessors import SaveAutoGrades

    assert NeutraliseStudentContent.runs_after == (SaveAutoGrades,)
