"""Pruning runs and AdaFilter compaction: magnitude masks (``masks``), zero counts and the exported pruned
weights (``pruned_state``), the sparse file of a pruned model (``sparse_file``), the Bayesian search over
per-stage pruning fractions (``search``), a pruning run's session, phases and life cycle (``session``,
``phases``, ``runner``), the baselines at matched compression (``baselines``: pruning after fine-tuning,
gradual magnitude pruning, channel pruning), channel pruning through Torch-Pruning (``structured``) and AdaFilter
compaction (``compaction``). The pruning benchmark that runs them side by side is ``studies.pruning_bench``.

May import: ``core``, ``data``, ``adafilter``, ``methods``, ``training``, ``analysis``.
"""
