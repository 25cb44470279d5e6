"""The repository's benchmarks: everything that measures the method rather than
being it, next to the results it produces (``benchmarks/results``).

Not part of the installed ``voting_det`` package: it runs from a checkout (the
tools put the repository root on ``sys.path``; pytest's rootdir does it for the
tests).

- :mod:`.runner`: the cross-validation runner of Tables 1 to 3 (training and
  evaluation in subprocesses, resumable, archived run records).
- :mod:`.tables`: the tables, intervals and plots from finished runs.
- :mod:`.speed`: speed, memory, size and FLOPs measurements.
- :mod:`.calipers`: the caliper flag behind the with / without calipers rows.
- :mod:`.baselines_simple`: two non-learned baselines that show how hard a set is.
- :mod:`.learning_curve`: every kept checkpoint of a run evaluated on a split.
"""
