"""Stage 2, grading one notebook: the nbgrader preprocessors that execute it in the sandbox,
capture the model, evaluate it in a clean process and score it against the rubric.
"""
