"""Stage 3, a whole class: finding submissions, running them on workers (local or Dask),
replaying stored executions, resuming, recording each outcome.
"""
