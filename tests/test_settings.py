"""One source of truth for each setting: what reads it sees every change to it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from autograder import settings
from autograder.batch.submissions import execution_fingerprint
from autograder.errors import ConfigError
from autograder.settings import LIMIT_ENV, Limits, execution_settings, limit_environment

LAB = "lab3_mnist_dense"


def test_a_new_limit_field_makes_graded_submissions_stale(tmp_path, staged_data, monkeypatch):
    before = execution_fingerprint(tmp_path, LAB)
    assert execution_fingerprint(tmp_path, LAB) == before  # stable while nothing changes

    @dataclass(frozen=True)
    class WithGpu(Limits):
        gpu_memory_mb: int = 1024

    monkeypatch.setattr(settings, "Limits", WithGpu)  # as if Limits had grown a field
    assert "gpu_memory_mb" in execution_settings()["limits"]
    assert execution_fingerprint(tmp_path, LAB) != before


@pytest.mark.parametrize("field", sorted(LIMIT_ENV))
def test_every_limit_set_from_outside_changes_the_fingerprint(
    tmp_path, staged_data, monkeypatch, field
):
    before = execution_fingerprint(tmp_path, LAB)
    monkeypatch.setenv(LIMIT_ENV[field], "7")
    assert execution_fingerprint(tmp_path, LAB) != before


def test_the_training_limit_of_the_labs_data_set_changes_the_fingerprint(
    tmp_path, staged_data, monkeypatch
):
    before = execution_fingerprint(tmp_path, LAB)
    monkeypatch.setenv(settings.TRAIN_LIMIT_ENV, "imdb=4000")  # another lab's data set
    assert execution_fingerprint(tmp_path, LAB) == before
    monkeypatch.setenv(settings.TRAIN_LIMIT_ENV, "mnist=100")
    assert execution_fingerprint(tmp_path, LAB) != before


def test_limit_environment_is_what_limits_read():
    env = limit_environment(notebook_timeout_s=30, memory_mb=1500, cell_timeout_s=None)
    assert Limits.from_env(env) == Limits(notebook_timeout_s=30, memory_mb=1500)
    with pytest.raises(ConfigError, match="processes"):
        limit_environment(processes=3)  # not settable from outside: refused, not ignored
