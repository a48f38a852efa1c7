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


def test_scaling_inside_the_model_is_accepted(graded_cnn):
    student = "variant-rescaling-in-model"
    assert scores(graded_cnn, LAB, student) == {**FULL, "check_inputs": 1.5}
    assert messages(graded_cnn, LAB, student, "check_inputs") == (
        "`train_images` keeps values from 0 to 255, not the lab's [0, 1]; the model scales "
        "them itself (Rescaling first), which works: accepted, less 0.5 points because the "
        "arrays are not prepared as the lab asks",
    )
    assert "(n, 28, 28, 1) float32, learned from the inputs fit() received" in (
        result_of(graded_cnn, LAB, student).preparation
    )


def test_channels_first_is_the_conceptual_error(graded_cnn):
    """TensorFlow runs no channels-first convolution on a CPU: the model cannot be run,
    and the student reads why in their terms, not as a raw Keras exception."""
    student = "channels-first"
    s = scores(graded_cnn, LAB, student)
    assert s["check_inputs"] == 1
    (message,) = messages(graded_cnn, LAB, student, "check_inputs")
    assert message.startswith("`train_images` has shape (3000, 1, 28, 28); expected (n, 28, 28, 1)")
    assert message.endswith("(a conceptual error this lab teaches: 1 of 2 points)")
    assert s["check_architecture"] == 2.25  # its input shape: a quarter
    assert s["check_accuracy"] == 0
    (why,) = messages(graded_cnn, LAB, student, "check_accuracy")
    assert why.startswith(
        "the model could not be evaluated on held-out data: the model takes inputs of shape "
        "(n, 1, 28, 28) and could not be run on the held-out data prepared as the notebook's "
        "arrays ((n, 1, 28, 28) float32): UnimplementedError: The Conv2D op currently only "
        "supports the NHWC tensor format on the CPU"
    )
    assert why.endswith(
        "prepared as the lab asks ((n, 28, 28, 1) float32, values / 255), it could not be run "
        "either"
    )
