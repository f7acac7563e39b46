"""Reading run records: tables (``results``, ``table_render``), per-run records and gate statistics
(``records``), fine-tuned filters' drift by how often they were chosen (``drift``), counterfactual gates
(``counterfactual``), the rendering of a study's comparison (``comparison_render``), the stage surgical
fine-tuning chose beside gated rows' per-stage usage (``stage_choice``), pruning fronts (``pruning_front``),
figures (``viz``, ``image_figures``, ``pruning_figures``: every plot a function returning a matplotlib
``Figure``) and the gate inspector widget (``widgets``).

May import: ``core``, ``data``, ``adafilter``, ``methods``, ``training``.
"""
