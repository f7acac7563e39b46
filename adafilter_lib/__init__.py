"""AdaFilter study kit: adaptive fine-tuning methods, one training loop, gate statistics and tables.

The package is layered; each subpackage imports only those before it:

    core -> data -> adafilter -> methods -> training -> analysis -> studies -> pruning -> cli

``core`` (settings, network, one training step, run folders), ``data`` (datasets, splits, transforms,
``prepare``), ``adafilter`` (gated layers, gate network, gate records), ``methods`` (one small object per
transfer method), ``training`` (``fit``: one run), ``analysis`` (tables, records, counterfactuals, figures,
widgets), ``studies`` (recipes, ``tune``, the demo, the paper sweep, benchmarks), ``pruning``
(Fine-Pruning, AdaFilter compaction), ``cli`` (the command line).

What notebooks use most is importable from here (loaded on first use, so ``import adafilter_lib`` stays cheap):
``fit``, ``load_config``, ``load_finished_run``, ``load_runs``, ``build_tables``, ``GateInspector``,
``load_gate_record``, ``counterfactual_errors``, ``run_fine_pruning``, ``run_prune_after_finetune``,
``run_gradual_magnitude``.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "fit": "adafilter_lib.training.trainer",
    "load_finished_run": "adafilter_lib.training.finished",
    "load_config": "adafilter_lib.core.config",
    "load_runs": "adafilter_lib.analysis.results",
    "build_tables": "adafilter_lib.analysis.results",
    "GateInspector": "adafilter_lib.analysis.widgets",
    "load_gate_record": "adafilter_lib.adafilter.gate_record",
    "counterfactual_errors": "adafilter_lib.analysis.counterfactual",
    "run_fine_pruning": "adafilter_lib.pruning.runner",
    "run_prune_after_finetune": "adafilter_lib.pruning.runner",
    "run_gradual_magnitude": "adafilter_lib.pruning.runner",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'adafilter_lib' has no attribute '{name}'")
