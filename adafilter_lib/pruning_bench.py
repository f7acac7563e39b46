"""The pruning benchmark: Fine-Pruning vs dense fine-tuning vs prune-after-fine-tune, and AdaFilter compaction.

One call trains (or reuses) on the offline data, with the demo recipe (EfficientNet-Lite0, ImageNet
weights, 64 px) and the same number of training epochs on every method's path:

- ``finetune`` (dense reference), ``fine_pruning`` and ``prune_after_finetune`` (at Fine-Pruning's
  sparsity) under ``<runs_root>/main``; ``adafilter`` there too, and ``adafilter`` with the compact-task
  recipe (usage penalty, narrow gate network, every conv gated: ``USAGE_PENALTY``) under
  ``<runs_root>/usage_penalty``;
- a compaction sweep over thresholds of both AdaFilter runs.

Files written to ``out_dir`` (all by this code, never by hand):

``summary.csv``      one row per method: ``method, top1_err, compression, nonzero_params`` (+ ``val_top1_err``,
                     ``sparsity``, ``accuracy_loss`` = top1_err minus fine-tuning's, in points)
``compaction.csv``   one row per (variant, threshold): ``threshold, extra_params_frac, top1_err``
                     (+ ``variant``, ``val_top1_err``, ``top1_err_change``, parameter counts)
``error_table.*``    the error table of the ``main`` runs (:func:`adafilter_lib.results.build_tables`)
``front.png``        validation accuracy vs compression of every Fine-Pruning trial, the front, the runs
``README.md``        the command that produced these files and what each column means
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
import torch

from . import runs, study
from .compaction import compaction_sweep
from .config import RunConfig, load_config
from .demo import demo_config_path
from .pruning import compression_stats
from .pruning_search import plot_front
from .pruning_study import TRIALS_FILE, run_fine_pruning, run_prune_after_finetune
from .results import build_tables
from .trainer import fit, prepare_run

PRUNING_METHODS = ("finetune", "fine_pruning", "prune_after_finetune")
# Fine-Pruning schedule of the benchmark, sized for 2 CPU cores (path epochs: 3 + 3 * 1 + 2 = 8, the other
# methods' optim.epochs; the 30 trials add 30 epochs of search). lam 0.2 gave 2.8x at 10.3% test error,
# lam 0.05 with 6 trials per round 2.6x at 13.2% (seed 0).
BENCH_OVERRIDES = (
    "method.fine_pruning.warmup_epochs=3",
    "method.fine_pruning.rounds=3",
    "method.fine_pruning.trials=10",
    "method.fine_pruning.startup_trials=4",
    "method.fine_pruning.trial_epochs=1",
    "method.fine_pruning.round_epochs=1",
    "method.fine_pruning.final_epochs=2",
    "method.fine_pruning.lam=0.2",
)
BENCH_THRESHOLDS = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.01)
# The seconds-long version the notebook tests run (with dataset digits, 4 images per class).
SMOKE_OVERRIDES = (
    *study.SMOKE_OVERRIDES,
    f"model.backbone={study.SMOKE_BACKBONE}",
    "method.fine_pruning.warmup_epochs=0",
    "method.fine_pruning.rounds=1",
    "method.fine_pruning.trials=2",
    "method.fine_pruning.startup_trials=1",
    "method.fine_pruning.trial_epochs=0",
    "method.fine_pruning.round_epochs=0",
    "method.fine_pruning.final_epochs=1",
)
# AdaFilter recipe for compact tasks: the usage penalty (lam 1000: it acts on the mean of ~10^5 gates per batch,
# so each gate's share of its gradient is tiny), a narrow gate network and every conv gated (the stem and head
# conv are then compactable too).
USAGE_PENALTY = (
    "method.adafilter.usage_penalty=1000",
    "method.adafilter.usage_target=0.1",
    "method.adafilter.hidden=16",
    "method.adafilter.gated_layers=all",
)


def bench_config(runs_root: str, method: str, dataset: str, n_per_class: int, overrides: Sequence[str] = ()) -> RunConfig:
    """The demo recipe on ``dataset`` with the benchmark's schedule; ``optim.epochs`` = Fine-Pruning's path epochs."""
    values = [
        f"data.dataset={dataset}",
        f"data.n_per_class={n_per_class}",
        *BENCH_OVERRIDES,
        f"runs_root={runs_root}",
        f"method.name={method}",
        *overrides,
    ]
    return load_config(demo_config_path(), [*values, f"optim.epochs={path_epochs(load_config(demo_config_path(), values))}"])


def path_epochs(cfg: RunConfig) -> int:
    """Training epochs on the path to Fine-Pruning's model (trials not counted)."""
    fp = cfg.method.fine_pruning
    return fp.warmup_epochs + fp.rounds * fp.round_epochs + fp.final_epochs


def dense_stats(cfg: RunConfig) -> dict:
    """Compression and nonzero counts of a finished dense run (from the actual zeros of ``best.pt``)."""
    _, _, model = prepare_run(cfg)
    model.load_state_dict(torch.load(cfg.run_dir() / runs.BEST, map_location="cpu", weights_only=True))
    return compression_stats(model)


def summary_table(configs: dict[str, RunConfig]) -> pd.DataFrame:
    """One row per method from finished runs: ``method, top1_err, compression, nonzero_params, ...``."""
    rows = []
    for method, cfg in configs.items():
        summary = runs.read_summary(cfg.run_dir())
        stats = summary if "compression" in summary else dense_stats(cfg)
        rows.append(
            {
                "method": method,
                "top1_err": summary["top1_err"],
                "compression": stats["compression"],
                "nonzero_params": stats["nonzero_params"],
                "val_top1_err": summary["val_top1_err"],
                "sparsity": stats["sparsity"],
                "total_params": stats["total_params"],
            }
        )
    table = pd.DataFrame(rows)
    dense = table.loc[table["method"] == "finetune", "top1_err"]
    table["accuracy_loss"] = table["top1_err"] - (dense.iloc[0] if len(dense) else float("nan"))
    return table


def _readme(command: str, seconds: float, cfg: RunConfig) -> str:
    data = cfg.data
    return f"""# Pruning benchmark (generated by `adafilter_lib.pruning_bench`; do not edit)

Command: `{command}`

{cfg.model.backbone} ({"pretrained" if cfg.model.pretrained else "random init"}), {data.dataset} with {data.n_per_class} labelled images
per class ({100 * data.val_fraction:.0f}% of them for validation), {data.resolution} px, every method {cfg.optim.epochs} training epochs
on the path to its model, seed {cfg.seed}; Fine-Pruning's trials
add `search_epochs` more (see its `summary.json`). This call took {seconds:.0f} s (runs that had already finished were reused;
their own times are `train_seconds` in their `summary.json`).

- `summary.csv`: `method`, `top1_err` (test top-1 error, %), `compression` (backbone conv/linear weights ÷
  nonzero ones, from actual zeros), `nonzero_params` (nonzero entries of all parameters, head included),
  `val_top1_err`, `sparsity`, `total_params`, `accuracy_loss` (top1_err minus fine-tuning's, points).
- `compaction.csv`: `variant` (`adafilter`, or `adafilter_usage_penalty` with {", ".join(USAGE_PENALTY)}),
  `threshold` (filters selected for fewer than this fraction of validation images are dropped),
  `extra_params_frac` (task-specific parameters ÷ backbone parameters: kept fine-tuned filters with their BN,
  gate network, ungated fine-tuned layers; head excluded), `top1_err`, `val_top1_err`, `top1_err_change`
  (vs. threshold 0 of the same run), `top1_err_vs_adafilter` (vs. the default AdaFilter run, uncompacted)
  and the parameter counts.
- `error_table.*`: the error table of the runs under `main/`; `front.png`: every Fine-Pruning trial.
"""


def run_pruning_bench(
    runs_root: str = "runs/pruning",
    out_dir: str = "results/pruning",
    dataset: str = "mnist5k",
    n_per_class: int = 20,
    overrides: Sequence[str] = (),
    thresholds: Sequence[float] = BENCH_THRESHOLDS,
    progress: bool = True,
    command: Optional[str] = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train (or reuse) the benchmark runs and write ``summary.csv``, ``compaction.csv`` and the rest to ``out_dir``.

    Returns:
        (summary table, compaction table).
    """
    start = time.perf_counter()
    main, penalty = f"{runs_root}/main", f"{runs_root}/usage_penalty"
    configs = {m: bench_config(main, m, dataset, n_per_class, overrides) for m in PRUNING_METHODS}
    fit(configs["finetune"], resume=True, progress=progress)
    run_fine_pruning(configs["fine_pruning"], resume=True, progress=progress)
    run_prune_after_finetune(configs["prune_after_finetune"], resume=True, progress=progress)
    variants = {
        "adafilter": bench_config(main, "adafilter", dataset, n_per_class, overrides),
        "adafilter_usage_penalty": bench_config(penalty, "adafilter", dataset, n_per_class, [*overrides, *USAGE_PENALTY]),
    }
    sweeps = []
    for variant, cfg in variants.items():
        fit(cfg, resume=True, progress=progress)
        sweeps.append(compaction_sweep(cfg.run_dir(), thresholds, progress=progress).assign(variant=variant))
    compaction = pd.concat(sweeps, ignore_index=True)
    reference = runs.read_summary(variants["adafilter"].run_dir())["top1_err"]
    compaction["top1_err_vs_adafilter"] = compaction["top1_err"] - reference  # vs. the default AdaFilter, uncompacted
    compaction = compaction[["variant", *[c for c in compaction.columns if c != "variant"]]]
    summary = summary_table(configs)
    out = Path(out_dir)
    runs.atomic_write_text(out / "summary.csv", summary.to_csv(index=False, lineterminator="\n"))
    runs.atomic_write_text(out / "compaction.csv", compaction.to_csv(index=False, lineterminator="\n"))
    build_tables(main, out, method_order=[*PRUNING_METHODS, "adafilter"])
    _write_front(configs, summary, out / "front.png")
    command = command or (
        f"python -m adafilter_lib prune-bench --dataset {dataset} --n-per-class {n_per_class}"
        + (f" --set {' '.join(overrides)}" if overrides else "")
    )
    runs.atomic_write_text(out / "README.md", _readme(command, time.perf_counter() - start, configs["finetune"]))
    return summary, compaction


def _write_front(configs: dict[str, RunConfig], summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    trials = pd.read_csv(configs["fine_pruning"].run_dir() / TRIALS_FILE)
    refs = {f"{r.method} (val)": (r.compression, r.val_top1_err) for r in summary.itertuples()}
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_front(trials, ax=ax, references=refs)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
