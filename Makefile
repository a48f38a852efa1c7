# The README's two commands: `make demo` (main job) and `make test` (the test suite).
# Both set up from nothing but Debian (scripts/setup): the Debian packages that are missing,
# a virtual environment in .venv with the pinned packages of requirements.lock, the hub's
# proxy from package-lock.json, and the offline data sets.
# Debian's Python, not one under /root: students' servers run as their own OS accounts and
# must be able to read the interpreter and its standard library.
PYTHON ?= /usr/bin/python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup data demo test test-fast lint format release calibrate hub bench clean

# Checks every requirement on every run and installs only what is missing (scripts/setup).
setup:
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup

data: setup
	$(BIN)/autograder stage-data

demo: data
	$(BIN)/autograder demo

lint: setup
	bash scripts/check

test: data lint
	$(BIN)/python -m pytest -ra --durations=25

# Everything that does not train a model, grade notebooks end to end or drive a hub (the
# tests marked slow): under 3 minutes, set-up check and lint included.
test-fast: data lint
	$(BIN)/python -m pytest -ra -m "not slow"

format: setup
	$(BIN)/ruff format autograder tests

release: setup
	$(BIN)/autograder release

# Full-size calibration of every lab (IMDB on all 25,000 reviews: the better part of an
# hour on 2 cores), then the quick IMDB profile that the test suite and the demo use.
calibrate: data
	$(BIN)/autograder calibrate lab3_mnist_dense --seeds 0 1 2 3 4 5 6 7 8 9 10 11
	$(BIN)/autograder calibrate lab3_boston_regression --seeds 0 1 2 3 4
	$(BIN)/autograder calibrate lab4_mnist_cnn --seeds 101 102 103 104 105 106 107 108 109 110 111 112
	$(BIN)/autograder calibrate lab5_imdb_rnn --seeds 0 1 2
	AUTOGRADER_TRAIN_LIMIT=imdb=4000 $(BIN)/autograder calibrate lab5_imdb_rnn --seeds 0 1 2 3 4

hub: data
	$(BIN)/autograder hub

# Serial `nbgrader autograde` (kernels started, then forked) against `autograder grade` on
# the same 8 submissions, on the offline sample and on full-size Fashion-MNIST (about
# 10 minutes on 2 cores).
bench: data
	$(BIN)/python benchmarks/batch_vs_serial.py --n 8

clean:
	rm -rf $(VENV) node_modules var
