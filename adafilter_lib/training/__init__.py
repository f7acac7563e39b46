"""One training loop for every method: ``fit`` trains or reuses one run (seeded, resumable, published
atomically); ``prepare_run`` and the loaders rebuild what a run trained with; ``load_finished_run``
gives a finished run's model with its best weights to every analysis.

May import: ``core``, ``data``, ``adafilter``, ``methods``.
"""
