"""A batch's outcomes: the overhead figures ``benchmarks/batch_vs_serial.py`` prints."""

from __future__ import annotations

import pytest

from autograder.batch.submissions import SubmissionOutcome

LAB = "lab3_mnist_dense"


def test_the_overhead_parts_add_up_to_the_overhead():
    executed = SubmissionOutcome(
        LAB,
        "s0",
        "graded",
        timing={
            "worker_s": 4.0,
            "cells_s": 3.0,
            "sanitize_s": 0.05,
            "execute_s": 3.3,
            "evaluate_s": 0.4,
            "replay_s": 0.25,
        },
    )
    parts = executed.overhead_parts()
    assert parts["execution beyond the cells"] == pytest.approx(0.3)
    assert parts["other"] == pytest.approx(0.25)  # 4.0 - 0.05 - 3.3 - 0.4
    assert executed.overhead_s == pytest.approx(1.25)
    assert sum(parts.values()) == pytest.approx(executed.overhead_s)
    # Re-scored from a stored execution: nothing executed, no cells.
    rescored = SubmissionOutcome(
        LAB,
        "s1",
        "graded",
        timing={"worker_s": 0.5, "sanitize_s": 0.05, "evaluate_s": 0.4, "replay_s": 0.2},
    )
    assert rescored.overhead_parts()["execution beyond the cells"] == 0.0
    assert sum(rescored.overhead_parts().values()) == pytest.approx(rescored.overhead_s)
    assert rescored.overhead_s == pytest.approx(0.7)
