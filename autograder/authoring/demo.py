"""The main job: release the labs, grade the bundled example submissions, export, report."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from autograder._runtime import environment
from autograder.authoring.examples import EXAMPLES, example_path
from autograder.batch.scheduling import grade_batch
from autograder.course import create_course
from autograder.reports.gradebook import check_table, format_table
from autograder.settings import TRAIN_LIMIT_ENV, limit_environment

__all__ = ["run_demo"]


def _say(msg: str) -> None:
    print(msg, flush=True)


# Full-size IMDB training takes minutes per notebook on a CPU; the demo trains on 4,000
# reviews (graded against that data source's own calibrated thresholds) unless told otherwise.
DEMO_TRAIN_LIMIT = "imdb=4000"
DEMO_ADVERSARIAL_LIMITS = limit_environment(
    notebook_timeout_s=30, cell_timeout_s=60, memory_mb=1500
)


def run_demo(workdir: Path, labs: list[str] | None = None) -> int:
    from autograder.data.staging import stage

    os.environ.setdefault(TRAIN_LIMIT_ENV, DEMO_TRAIN_LIMIT)
    t0 = time.monotonic()
    labs = labs or sorted(EXAMPLES)
    _say("1/5 data: staging the offline data sets (no download)")
    report = stage()
    _say("    " + report.format().replace("\n", "\n    "))

    course_root = workdir / "course"
    if course_root.exists():
        shutil.rmtree(course_root)
    _say(
        f"2/5 release: course directory {course_root}, nbgrader generate_assignment for "
        + ", ".join(labs)
    )
    course = create_course(course_root, labs=labs)

    _say("3/5 submissions: the bundled examples, one student each")
    for lab in labs:
        for name, example in EXAMPLES[lab].items():
            course.submit(name, lab, example_path(lab, name))
            _say(f"    {lab}/{name}: {example.description}")

    _say(
        "4/5 autograde: the whole class in parallel (autograder grade); each notebook runs "
        "under limits, its saved model is graded outside the student's kernel "
        f"({TRAIN_LIMIT_ENV}={os.environ[TRAIN_LIMIT_ENV]})"
    )
    adversarial = {n for lab in labs for n, e in EXAMPLES[lab].items() if e.adversarial}
    regular = sorted({n for lab in labs for n in EXAMPLES[lab]} - adversarial)
    summaries = [grade_batch(course.root, labs=labs, students=regular)]
    if adversarial:
        # Hangs and memory hogs on purpose: tight limits, so each costs seconds, not the
        # production half hour.
        _say("    adversarial examples, under tight limits: " + ", ".join(sorted(adversarial)))
        with environment(DEMO_ADVERSARIAL_LIMITS):
            summaries.append(grade_batch(course.root, labs=labs, students=sorted(adversarial)))
    failures = 0
    for summary in summaries:
        _say("    " + summary.format().replace("\n", "\n    "))
        failures += summary.count("failed")

    _say("5/5 gradebook: nbgrader export, then the per-check table")
    export = subprocess.run(
        [str(Path(sys.executable).parent / "nbgrader"), "export"],
        cwd=course.root,
        capture_output=True,
        text=True,
        check=False,
    )
    grades = course.root / "grades.csv"
    _say(f"    nbgrader export -> {grades} (exit {export.returncode})")
    print()
    print(format_table(check_table(course.db_url, labs, include_missing=False, course=course.root)))
    print()
    _say(f"done in {time.monotonic() - t0:.0f} s; formgrader-ready course at {course.root}")
    return 1 if failures or export.returncode else 0
