"""Studies made of many runs: selection studies from recipe files (``recipe``, ``tune``, ``tune_tables``),
the demo (``demo``), the paper sweep (``sweep``), the notebooks' grid (``notebook_grid``), the step-time
benchmark (``step_time``) and the pruning benchmark (``pruning_bench``).

May import: ``core``, ``data``, ``adafilter``, ``methods``, ``training``, ``analysis``, ``pruning``.
"""
