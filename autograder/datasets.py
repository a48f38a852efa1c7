"""The course data sets, as a student's notebook loads them (``from autograder.datasets
import load_mnist``). The code is :mod:`autograder.data.loaders`; this module keeps every
name it had before the package was laid out by stage, for the notebooks already released
(and for the attacks in the examples, which must keep testing the real thing).
"""

from __future__ import annotations

from autograder.data.loaders import (
    DATA_DIR_ENV,
    DATASETS,
    STAGE_COMMAND,
    TRAIN_LIMIT_ENV,
    DatasetMissing,
    data_dir,
    data_source,
    grader_only_dirs,
    keep_loaded,
    load_boston_housing,
    load_heldout,
    load_imdb,
    load_imdb_word_index,
    load_mnist,
    only_kept,
    train_limit,
)

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "STAGE_COMMAND",
    "TRAIN_LIMIT_ENV",
    "DatasetMissing",
    "data_dir",
    "data_source",
    "grader_only_dirs",
    "keep_loaded",
    "load_boston_housing",
    "load_heldout",
    "load_imdb",
    "load_imdb_word_index",
    "load_mnist",
    "only_kept",
    "train_limit",
]

if __name__ == "__main__":  # the staging command's former name: python -m autograder.datasets
    import sys

    from autograder.data.staging import main

    sys.exit(main())
