"""Stage 1, the instructor's side: releasing student notebooks, example submissions,
calibrating thresholds, and the demo of the whole pipeline.
"""
