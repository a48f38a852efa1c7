"""A threshold change on a graded class: ``autograder grade --evaluate-only`` against
grading the class again, side by side in one run.

The class: the first N non-adversarial examples of each of the four labs, one student
each, graded once. Then every metric threshold moves (``zero`` halfway to ``full``) in a
copy of the rubrics (``AUTOGRADER_RUBRIC_DIR``), and the class is re-scored from the same
state with ``--evaluate-only`` (stored models, no notebook run). With ``--grade-again`` a
full regrade follows (stored executions removed, every notebook run again); without it
the first grading, the same work, is the comparison. The script prints the wall times and
their ratio, and checks that the re-scored class keeps every non-metric score and that
each metric score is what the new thresholds give the stored model's metric.

    .venv/bin/python benchmarks/regrade.py [--per-lab 4] [--workers 2] [--grade-again]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from autograder.authoring.examples import EXAMPLES, example_path
from autograder.batch.replay import cache_dir
from autograder.batch.scheduling import grade_batch
from autograder.course import create_course
from autograder.grading.preprocessors import read_result
from autograder.results import GradingResult
from autograder.rubric import lab_ids, load_rubric, rubric_version
from autograder.settings import RUBRIC_DIR_ENV, rubric_dir

_PAIR = re.compile(r"^full = ([0-9.]+)\nzero = ([0-9.]+)$", re.MULTILINE)


def _stricter(text: str) -> str:
    """No credit until halfway from the old ``zero`` to ``full`` (which stays: the review
    thresholds beyond it stay valid)."""

    def move(m: re.Match[str]) -> str:
        full, zero = float(m[1]), float(m[2])
        return f"full = {full}\nzero = {zero + (full - zero) * 0.5:.6g}"

    return _PAIR.sub(move, text)


def four_labs_class(
    root: Path, per_lab: int, counts: dict[str, int] | None = None
) -> dict[str, str]:
    """A course at ``root`` of the four labs, with the first ``per_lab`` non-adversarial
    examples of each (``counts`` per lab where it names one) submitted, one student each.
    Returns each student's lab."""
    course = create_course(root, labs=lab_ids())
    students: dict[str, str] = {}
    for lab in lab_ids():
        n = (counts or {}).get(lab, per_lab)
        for name in [k for k, ex in EXAMPLES[lab].items() if not ex.adversarial][:n]:
            student = f"{lab.split('_', 1)[1]}-{name}"[:32].lower()
            course.submit(student, lab, example_path(lab, name))
            students[student] = lab
    return students


def _results(course: Path, students: dict[str, str]) -> dict[tuple[str, str], GradingResult]:
    found = {}
    for student, lab in students.items():
        result = read_result(course / "autograded" / student / lab, load_rubric(lab).notebook)
        if result is not None:
            found[(student, lab)] = result
    return found


def _expected_metric_score(result: GradingResult, check_id: str) -> float | None:
    rubric = load_rubric(result.lab)
    check = rubric.check(check_id)
    value = result.metrics.get(check.params["metric"])
    if value is None:
        return None
    types = [layer["type"] for layer in (result.model or {}).get("layers", [])]
    fraction = check.threshold(result.data_source, types).fraction(value)
    return round(check.points * max(0.0, min(1.0, fraction)), 2)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-lab", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--grade-again", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="regrade-bench-"))
    try:
        root = work / "course"
        students = four_labs_class(root, args.per_lab)
        print(f"class: {len(students)} submissions over {len(lab_ids())} labs")
        begin = time.monotonic()
        first = grade_batch(root, workers=args.workers, progress=False)
        full_s = time.monotonic() - begin
        print(f"graded once: {full_s:.1f} s ({first.count('graded')} graded)")
        before = _results(root, students)

        rubrics = work / "rubrics"
        shutil.copytree(rubric_dir(), rubrics)
        for lab in lab_ids():
            path = rubrics / f"{lab}.toml"
            path.write_text(_stricter(path.read_text()))
        os.environ[RUBRIC_DIR_ENV] = str(rubrics)
        print("new rubric versions:", ", ".join(rubric_version(lab) for lab in lab_ids()))

        again = work / "again"
        shutil.copytree(root, again, symlinks=True)
        shutil.rmtree(cache_dir(again))  # grading again: every notebook runs

        begin = time.monotonic()
        rescored = grade_batch(root, workers=args.workers, progress=False, evaluate_only=True)
        evaluate_s = time.monotonic() - begin
        print(rescored.format().splitlines()[0])
        if args.grade_again:
            begin = time.monotonic()
            regraded = grade_batch(again, workers=args.workers, progress=False)
            full_s = time.monotonic() - begin
            print(regraded.format().splitlines()[0])

        after = _results(root, students)
        same_other, metric_ok, checked = 0, 0, 0
        for key, old in before.items():
            new = after.get(key)
            if new is None:
                print(f"  MISSING after --evaluate-only: {key}")
                continue
            checked += 1
            old_checks = {c.id: c.score for c in old.checks}
            metric_ids = {c.id for c in load_rubric(old.lab).checks if c.kind == "metric"}
            if all(old_checks[c.id] == c.score for c in new.checks if c.id not in metric_ids):
                same_other += 1
            if all(
                _expected_metric_score(new, c.id) in (None, c.score)
                for c in new.checks
                if c.id in metric_ids
            ):
                metric_ok += 1
        print(
            f"\n--evaluate-only {evaluate_s:.1f} s, grading "
            f"{'again' if args.grade_again else 'once'} {full_s:.1f} s: "
            f"ratio {full_s / evaluate_s:.1f}x"
        )
        print(
            f"non-metric scores unchanged: {same_other}/{checked}; "
            f"metric scores as the new thresholds give: {metric_ok}/{checked}"
        )
        ok = same_other == checked == metric_ok == len(students)
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
