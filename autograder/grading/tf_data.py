"""tf.data pipelines without autotuning, in the processes that train and evaluate models.

tf.data's autotuner (on unless a pipeline turns it off) stalls a pipeline while other
processes hold the machine's cores: two lab 3 ``model.fit`` calls side by side on 2 cores,
one TensorFlow thread each, left 16-20% of the machine idle and took 5.04-5.08 s each,
against 1-4% idle and 3.65-4.05 s without it, for less CPU (``benchmarks/tf_data_autotune.py``).
A batch runs one notebook per core, so that stall was most of the time two trainings side by
side lost against one alone. Autotuning only chooses how many threads and how large buffers
a pipeline uses: every element, and its order, stays as the pipeline defines it, so what a
notebook trains on and what it is graded on do not change.

The switch is TensorFlow's own option (``tf.data.Options().autotune.enabled = False``), added
to every dataset as an iterator is made from it, in the method TensorFlow's debug mode uses
for the same purpose (``DatasetV2._apply_debug_options``). It is private: where a TensorFlow
version lacks it, pipelines stay as they are and
``tests/test_evaluate.py::test_tf_data_pipelines_run_untuned_with_the_same_elements`` fails.
In a student's kernel it runs with the grader's other set-up code before the first cell;
code in the kernel can undo it, which only slows that notebook down, within its own limits.
"""

from __future__ import annotations

__all__ = ["UNTUNED_TF_DATA_SOURCE", "untune_tf_data"]

# Self-contained: it also runs in student kernels, where the autograder package may be
# replaced or absent.
UNTUNED_TF_DATA_SOURCE = r"""
def _autograder_untune_tf_data():
    try:
        import tensorflow as tf
        from tensorflow.python.data.ops import dataset_ops
        original = dataset_ops.DatasetV2._apply_debug_options
    except Exception:
        return
    if getattr(original, "autograder_untuned", False):
        return
    options = tf.data.Options()
    options.autotune.enabled = False

    def _apply_debug_options(self):
        return original(self).with_options(options)

    _apply_debug_options.autograder_untuned = True
    dataset_ops.DatasetV2._apply_debug_options = _apply_debug_options

_autograder_untune_tf_data()
del _autograder_untune_tf_data
"""


def untune_tf_data() -> None:
    """Turn tf.data's autotuning off in this process (a no-op the second time)."""
    exec(compile(UNTUNED_TF_DATA_SOURCE, "<autograder tf.data>", "exec"), {})
