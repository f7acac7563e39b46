"""One training loop for every method: ``fit`` trains or reuses one run (seeded, resumable, published
atomically); ``setup`` (``prepare_run``, the loaders, the seeds) rebuilds what a run trains with; ``load_finished_run``
gives a finished run's model with its best weights to every analysis.

May import: ``core``, ``data``, ``adafilter``, ``methods``.
"""
