"""MNIST convnet: example submissions graded end to end."""

from __future__ import annotations

import pytest
from grading_helpers import messages, result_of, scores

LAB = "lab4_mnist_cnn"
pytestmark = pytest.mark.slow
FULL = {"check_architecture": 3, "check_compile": 1, "check_inputs": 2, "check_accuracy": 4}


@pytest.mark.parametrize("student", ["correct", "variant-functional-deeper"])
def test_correct_and_variant_get_full_marks(graded_cnn, student):
    assert scores(graded_cnn, LAB, student) == FULL
    assert result_of(graded_cnn, LAB, student).metrics["accuracy"] >= 0.86  # the rubric's full


def test_variant_is_recognised_as_a_convnet(graded_cnn):
    msg = messages(graded_cnn, LAB, "variant-functional-deeper", "check_architecture")[0]
    assert msg.startswith("architecture as expected: Conv2D 32 relu, Conv2D 32 relu")
    assert "Dropout" in msg


def test_dense_network_misses_the_point(graded_cnn):
    s = scores(graded_cnn, LAB, "dense-only")
    assert s["check_architecture"] == 0
    assert messages(graded_cnn, LAB, "dense-only", "check_architecture") == ("no Conv2D layer",)
    assert s["check_inputs"] == 2 and s["check_compile"] == 1


def test_missing_channel_axis(graded_cnn):
    s = scores(graded_cnn, LAB, "no-channel-axis")
    assert s["check_inputs"] == 1.5
    assert messages(graded_cnn, LAB, "no-channel-axis", "check_inputs") == (
        "`train_images` has shape (3000, 28, 28); expected (n, 28, 28, 1) (add the channel "
        "axis last: `train_images = train_images.reshape((len(train_images), 28, 28, 1))`, "
        "the test images likewise)",
    )
    assert s["check_architecture"] == 3
