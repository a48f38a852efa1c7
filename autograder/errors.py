"""User-facing errors: each carries an exit code and a one-line cause."""

from __future__ import annotations

__all__ = ["AutograderError", "ConfigError", "DataError", "GradingError"]


class AutograderError(Exception):
    """An error the CLI reports as one line and exits with ``exit_code``."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(AutograderError):
    """A rubric, a course directory or an option is invalid."""

    exit_code = 2


class DataError(AutograderError):
    """A data set is missing or damaged."""

    exit_code = 3


class GradingError(AutograderError):
    """Grading could not run at all (not: a submission failed a check)."""

    exit_code = 4
