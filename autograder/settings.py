"""Every setting the grader reads, in one place: limits, environment variables, paths.

Read by everything that needs one (the sandbox, the batch and its resume fingerprint, the
command line, the demo, the hub's grading service), so a new limit or variable is declared
once and reaches them all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Final

from autograder.errors import ConfigError

__all__ = [
    "DATA_DIR_ENV",
    "EXAMPLES_DIR",
    "FORK_KERNELS_ENV",
    "HUB_SETTINGS_ENV",
    "IMDB_ARCHIVE_ENV",
    "KERNEL_CPU_WEIGHT",
    "LABS_DIR",
    "LIMIT_ENV",
    "PACKAGE_DIR",
    "PROJECT_DIR",
    "PROXY_COMMAND_ENV",
    "QUIET_TENSORFLOW",
    "RUBRIC_DIR_ENV",
    "SANDBOX_USER_ENV",
    "STATE_FILE",
    "TRAIN_LIMIT_ENV",
    "Limits",
    "execution_settings",
    "limit_environment",
    "rubric_dir",
    "threads_environment",
]

# --- paths -----------------------------------------------------------------------------------

PACKAGE_DIR: Final = Path(__file__).resolve().parent
LABS_DIR: Final = PACKAGE_DIR / "labs"  # rubrics, example lists, calibrations
EXAMPLES_DIR: Final = PACKAGE_DIR / "examples"  # example submissions, per lab
PROJECT_DIR: Final = PACKAGE_DIR.parent  # a source checkout: source/, release/, hub_config/
STATE_FILE: Final = ".autograder-batch.json"  # in an autograded folder: what the batch graded

# --- environment variables -------------------------------------------------------------------

DATA_DIR_ENV: Final = "AUTOGRADER_DATA_DIR"  # staged data (default ~/.autograder/data)
TRAIN_LIMIT_ENV: Final = "AUTOGRADER_TRAIN_LIMIT"  # "imdb=4000,...": smaller training sets
IMDB_ARCHIVE_ENV: Final = "AUTOGRADER_IMDB_ARCHIVE"  # the aclImdb archive to stage from
SANDBOX_USER_ENV: Final = "AUTOGRADER_SANDBOX_USER"  # "off": kernels as the grader's user
FORK_KERNELS_ENV: Final = "AUTOGRADER_FORK_KERNELS"  # "off": kernels started, not forked
HUB_SETTINGS_ENV: Final = "AUTOGRADER_HUB_SETTINGS"  # the hub's course.toml
PROXY_COMMAND_ENV: Final = "AUTOGRADER_PROXY_COMMAND"  # the hub's configurable-http-proxy
RUBRIC_DIR_ENV: Final = "AUTOGRADER_RUBRIC_DIR"  # the course's own rubrics (default: LABS_DIR)

# --- scheduling ------------------------------------------------------------------------------

# A student kernel's cpu cgroup weight, as a share of one grader process's (an evaluation
# child has a whole one): on busy cores the grader's short steps between notebooks (capture,
# evaluation, recording the grade) go first instead of waiting behind training, and
# kernels share the rest among themselves equally. Idle cores are anyone's.
KERNEL_CPU_WEIGHT: Final = 0.25


def threads_environment(threads: int) -> dict[str, str]:
    """TensorFlow's and OpenMP's threads in a batch worker's kernels and evaluations, sized
    so that the workers of one machine times ``threads`` match its cores."""
    return {
        "TF_NUM_INTRAOP_THREADS": str(threads),
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": str(threads),
    }


def rubric_dir() -> Path:
    """Where the rubrics are read: ``AUTOGRADER_RUBRIC_DIR`` (a course's own copies, with its
    thresholds) or the package's ``labs/``."""
    return Path(os.environ.get(RUBRIC_DIR_ENV) or LABS_DIR)


# Every process that imports TensorFlow for the grader: no start-up chatter, no GPU probing,
# and TensorFlow's own CPU kernels, not oneDNN's (which it turns on only on some CPUs, and
# which run what the others refuse: a channels-first convolution). Grades must not depend
# on which machine graded them.
QUIET_TENSORFLOW: Final[Mapping[str, str]] = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "CUDA_VISIBLE_DEVICES": "",
    "TF_ENABLE_ONEDNN_OPTS": "0",
}

# --- limits ----------------------------------------------------------------------------------

# Limits field -> the environment variable that overrides it (the batch command sets these).
LIMIT_ENV: Final[Mapping[str, str]] = {
    "cell_timeout_s": "AUTOGRADER_CELL_TIMEOUT",
    "notebook_timeout_s": "AUTOGRADER_NOTEBOOK_TIMEOUT",
    "memory_mb": "AUTOGRADER_MEMORY_MB",
}


@dataclass(frozen=True)
class Limits:
    """What one notebook may use. Times in seconds, memory in MiB (kernel and children);
    ``processes``: processes and threads of the kernel's account; ``file_size_mb``: the
    largest file it may write; ``output_mb``: output kept from the whole notebook."""

    cell_timeout_s: int = 900
    notebook_timeout_s: int = 1800
    memory_mb: int = 4096
    network: bool = False
    processes: int = 1024
    file_size_mb: int = 1024
    output_mb: int = 4

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "network" and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                raise ConfigError(f"limit {f.name} must be a positive whole number, not {value!r}")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, defaults: Limits | None = None
    ) -> Limits:
        """``defaults`` (or the built-in limits) with the ``AUTOGRADER_*`` overrides applied."""
        environ = os.environ if environ is None else environ
        changes: dict[str, Any] = {}
        for name, var in LIMIT_ENV.items():
            raw = environ.get(var, "").strip()
            if not raw:
                continue
            try:
                value = int(raw)
            except ValueError:
                value = 0
            if value <= 0:
                raise ConfigError(f"{var} must be a positive whole number, not {raw!r}")
            changes[name] = value
        return replace(defaults or cls(), **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def limit_environment(**values: int | None) -> dict[str, str]:
    """The environment that sets these limits (``memory_mb=1500`` ...); None leaves one unset."""
    unknown = set(values) - set(LIMIT_ENV)
    if unknown:
        raise ConfigError(f"no limit named {', '.join(sorted(unknown))} can be set from outside")
    return {LIMIT_ENV[k]: str(v) for k, v in values.items() if v is not None}


def execution_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every setting, besides notebook, data and code, that decides how a notebook runs: what
    the batch's fingerprint hashes, so that changing any of them makes graded submissions
    stale. The training limit is not here: it counts through the data source of each lab's
    data set (``mnist@3000``), so a limit on IMDB leaves the MNIST grades alone."""
    environ = os.environ if environ is None else environ
    return {
        "limits": Limits.from_env(environ).to_dict(),
        "sandbox_user": environ.get(SANDBOX_USER_ENV, ""),
    }
