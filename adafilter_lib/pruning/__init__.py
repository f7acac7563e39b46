"""Fine-Pruning and AdaFilter compaction: magnitude masks (``masks``), zero counts and the exported pruned
weights (``pruned_state``), the Bayesian search over per-stage pruning fractions (``search``), a pruning
run's training session and life cycle (``session``, ``runner``), AdaFilter compaction (``compaction``) and
the offline pruning benchmark (``pruning_bench``).

May import: ``core``, ``data``, ``adafilter``, ``methods``, ``training``, ``analysis``, ``studies``.
"""
