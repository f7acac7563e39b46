"""Studies made of many runs: selection studies from recipe files (``recipe``, ``tune``, ``tune_tables``),
the demo (``demo``), the paper sweep (``sweep``), notebook helpers (``study``) and the cost benchmark (``bench``).

May import: ``core``, ``data``, ``adafilter``, ``methods``, ``training``, ``analysis``.
"""
