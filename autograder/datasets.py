"""The course data sets, as a student's notebook loads them (``from autograder.datasets
import load_mnist``). The loaders are :mod:`autograder.data.loaders`; this name stays for the
notebooks already released.
"""

from __future__ import annotations

from autograder.data.loaders import (
    load_boston_housing,
    load_imdb,
    load_imdb_word_index,
    load_mnist,
)

__all__ = ["load_boston_housing", "load_imdb", "load_imdb_word_index", "load_mnist"]

if __name__ == "__main__":  # the staging command's former name: python -m autograder.datasets
    import sys

    from autograder.data.staging import main

    sys.exit(main())
