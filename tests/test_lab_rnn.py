"""IMDB recurrent network: example submissions graded end to end (4,000 training reviews)."""

from __future__ import annotations

import pytest
from grading_helpers import messages, result_of, scores

LAB = "lab5_imdb_rnn"
pytestmark = pytest.mark.slow
FULL = {"check_inputs": 2, "check_architecture": 3, "check_compile": 1, "check_accuracy": 4}


@pytest.mark.parametrize("student", ["correct", "variant-gru-functional"])
def test_correct_and_variant_get_full_marks(graded_rnn, student):
    assert scores(graded_rnn, LAB, student) == FULL
    result = result_of(graded_rnn, LAB, student)
    assert result.data_source == "offline-aclimdb@4000"
    assert len(result.history["val_accuracy"]) == 10


def test_no_recurrent_layer(graded_rnn):
    s = scores(graded_rnn, LAB, "no-recurrent-layer")
    assert s["check_architecture"] == 0
    assert messages(graded_rnn, LAB, "no-recurrent-layer", "check_architecture") == (
        "no SimpleRNN/LSTM/GRU/Bidirectional layer",
    )


def test_unpadded_sequences(graded_rnn):
    s = scores(graded_rnn, LAB, "not-padded")
    assert s["check_inputs"] == 0
    assert messages(graded_rnn, LAB, "not-padded", "check_inputs") == (
        "`input_train` is a list of sequences of different lengths, not a tensor: pad them "
        "to one length with `input_train = pad_sequences(input_train, maxlen=500)`",
    )
    assert s["check_accuracy"] == 0  # fit() failed on ragged input, the model is untrained


def test_softmax_output_and_oversized_embedding(graded_rnn):
    s = scores(graded_rnn, LAB, "softmax-output")
    assert s["check_architecture"] == 0 and s["check_compile"] == 0.5
    msgs = messages(graded_rnn, LAB, "softmax-output", "check_architecture")
    assert (
        "the output layer should be Dense 1 sigmoid; found Dense 2 softmax: end the network "
        'with `layers.Dense(1, activation="sigmoid")` (the probability of the positive class, '
        "between 0 and 1)" in msgs
    )
    assert (
        "Embedding has input_dim=20,000 but the data keeps only the top 10,000 words: "
        "use input_dim=10000" in msgs
    )


def test_simplernn_variant_is_accepted_structurally(graded_rnn):
    """SimpleRNN on 4,000 reviews is erratic, so only its structure is asserted here;
    the full-size calibration holds the threshold to the SimpleRNN's runs as well."""
    s = scores(graded_rnn, LAB, "variant-simplernn")
    assert s["check_architecture"] == 3 and s["check_inputs"] == 2 and s["check_compile"] == 1
    assert 0.4 < result_of(graded_rnn, LAB, "variant-simplernn").metrics["accuracy"] < 1
