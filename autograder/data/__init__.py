"""Stage 0, the data: offline staging of the course data sets, their storage formats, and
the loaders that read them (students' ``public/``, the grader's ``heldout/``).
"""
