"""Reading run records: tables (``results``, ``table_render``), per-run records and gate statistics
(``records``), fine-tuned filters' drift by how often they were chosen (``drift``), counterfactual gates
(``counterfactual``), figures (``viz``, ``image_figures``, ``pruning_figures``: every plot a function
returning a matplotlib ``Figure``) and the gate inspector widget (``widgets``).

May import: ``core``, ``data``, ``adafilter``, ``methods``, ``training``.
"""
