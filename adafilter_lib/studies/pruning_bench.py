"""The pruning benchmark: Fine-Pruning vs dense fine-tuning vs prune-after-fine-tune, and AdaFilter compaction.

One call trains (or reuses), for each of its seeds (0, 1, 2 by default), on the offline data with the demo recipe
(EfficientNet-Lite0, ImageNet weights, 64 px) and the same number of training epochs on every method's path:

- ``finetune`` (dense reference), ``fine_pruning`` and ``prune_after_finetune`` (at Fine-Pruning's
  sparsity) under ``<runs_root>/main``; ``adafilter`` there too, and ``adafilter`` with the compact-task
  recipe (usage penalty, narrow gate network, every conv gated: ``USAGE_PENALTY``) under
  ``<runs_root>/usage_penalty``;
- a compaction sweep over thresholds of both AdaFilter runs.

Files written to ``out_dir`` (all by this code, never by hand):

``summary.csv``      one row per seed and method: ``seed, method, top1_err, compression, nonzero_params`` (+
                     ``val_top1_err``, ``sparsity``, ``accuracy_loss`` = top1_err minus that seed's fine-tuning's)
``compaction.csv``   one row per (seed, variant, threshold): ``threshold, extra_params_frac, top1_err``
                     (+ ``variant``, ``val_top1_err``, ``top1_err_change``, parameter counts)
``error_table.*``    the error table of the ``main`` runs, every seed (:func:`adafilter_lib.analysis.results.build_tables`)
``comparison.*``     test error paired by seed against fine-tuning, ± SE (:func:`~adafilter_lib.studies.tune_tables.paired_comparison`)
``front_seed<N>.png`` validation accuracy vs compression of every Fine-Pruning trial of seed N, the front, the runs
``README.md``        the command that produced these files and what each column means
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from ..analysis.pruning_figures import front_figure
from ..analysis.results import build_tables, load_runs
from ..analysis.viz import save_figure
from ..core import files, runs
from ..core.config import RunConfig
from ..core.config_files import packaged_recipe
from ..core.errors import KitError, RunFailed
from ..pruning.compaction_records import recorded_compaction_sweep
from ..pruning.pruned_state import compression_stats
from ..pruning.runner import TRIALS_FILE, run_fine_pruning, run_prune_after_finetune
from ..training.finished import load_finished_run
from ..training.trainer import fit
from . import notebook_grid
from .demo import demo_config_path
from .recipe import grid as recipe_grid
from .recipe import method_grid
from .tune_tables import write_paired_comparison

PRUNING_METHODS = ("finetune", "fine_pruning", "prune_after_finetune")
# The benchmark's settings (adafilter_lib/configs/recipes/pruning_bench.yaml, where each is explained): Fine-Pruning's
# schedule, the compaction thresholds, the seconds-long smoke schedule and the compact-task AdaFilter recipe.
_RECIPE = packaged_recipe("pruning_bench")
BENCH_OVERRIDES: tuple[str, ...] = tuple(_RECIPE["bench"])
BENCH_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in _RECIPE["thresholds"])
SMOKE_OVERRIDES: tuple[str, ...] = (
    *notebook_grid.SMOKE_OVERRIDES,
    f"model.backbone={notebook_grid.SMOKE_BACKBONE}",
    *_RECIPE["smoke"],
)
USAGE_PENALTY: tuple[str, ...] = tuple(_RECIPE["usage_penalty"])
DENSE_STATS_FILE = "compression.json"  # a dense run's counted zeros, recorded beside its summary


def bench_config(runs_root: str, method: str, dataset: str, n_per_class: int, overrides: Sequence[str] = ()) -> RunConfig:
    """The demo recipe on ``dataset`` with the benchmark's schedule; ``optim.epochs`` = Fine-Pruning's path epochs."""
    bench = method_grid(runs_root, [method], {dataset: n_per_class}, [0], demo_config_path(), BENCH_OVERRIDES, overrides)
    epochs = path_epochs(recipe_grid(bench)[0])  # the caller's --set may change Fine-Pruning's schedule
    return recipe_grid(dataclasses.replace(bench, overrides=(*bench.overrides, f"optim.epochs={epochs}")))[0]


def path_epochs(cfg: RunConfig) -> int:
    """Training epochs on the path to Fine-Pruning's model (trials not counted)."""
    fp = cfg.method.fine_pruning
    return fp.warmup_epochs + fp.rounds * fp.round_epochs + fp.final_epochs


def dense_stats(cfg: RunConfig) -> dict:
    """Compression and nonzero counts of a finished dense run, from the actual zeros of ``best.pt``: counted once
    and recorded in the run's ``compression.json`` (committed records keep no weights), read from there after."""
    record = cfg.run_dir() / DENSE_STATS_FILE
    if record.is_file():
        try:
            return json.loads(record.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise KitError(f"damaged record '{record}' ({err}); delete it to count the zeros of best.pt again") from None
    stats = compression_stats(load_finished_run(cfg.run_dir(), device="cpu").model)
    files.atomic_write_json(record, stats)
    return stats


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


def _readme(command: str, seconds: float, cfg: RunConfig, runs_root: str, seeds: Sequence[int]) -> str:
    data = cfg.data
    return f"""# Pruning benchmark (generated by `adafilter_lib.studies.pruning_bench`; do not edit)

Command: `{command}`
(the runs' small records under `{runs_root}`, `compaction.csv` and `compression.json` included, rebuild every file here
without weights: rerun the command).
Recipe: `adafilter_lib/configs/recipes/pruning_bench.yaml` (Fine-Pruning's schedule, the compaction thresholds, the
usage-penalty AdaFilter recipe) on top of `adafilter_lib/configs/demo.yaml`.

{cfg.model.backbone} ({"pretrained" if cfg.model.pretrained else "random init"}), {data.dataset} with {data.n_per_class} labelled images
per class ({100 * data.val_fraction:.0f}% of them for validation), {data.resolution} px, every method {cfg.optim.epochs} training epochs
on the path to its model, seeds {", ".join(map(str, seeds))}; Fine-Pruning's trials
add `search_epochs` more (see its `summary.json`). This call took {seconds:.0f} s (runs that had already finished were reused;
their own times are `train_seconds` in their `summary.json`).

- `summary.csv`: `seed`, `method`, `top1_err` (test top-1 error, %), `compression` (backbone conv/linear weights ÷
  nonzero ones, from actual zeros), `nonzero_params` (nonzero entries of all parameters, head included),
  `val_top1_err`, `sparsity`, `total_params`, `accuracy_loss` (top1_err minus that seed's fine-tuning's, points).
- `compaction.csv`: `seed`, `variant` (`adafilter`, or `adafilter_usage_penalty` with {", ".join(USAGE_PENALTY)}),
  `threshold` (filters selected for fewer than this fraction of validation images are dropped),
  `extra_params_frac` (task-specific parameters ÷ backbone parameters: kept fine-tuned filters with their BN,
  gate network, ungated fine-tuned layers; head excluded), `top1_err`, `val_top1_err`, `top1_err_change`
  (vs. threshold 0 of the same run), `top1_err_vs_adafilter` (vs. the default AdaFilter run, uncompacted)
  and the parameter counts.
- `error_table.*`: the error table of every run under `main/` (every seed trained there); `comparison.csv/.md`:
  each method's test error paired by seed against `finetune`, ± the standard error of the paired differences;
  `front_seed<N>.png`: every Fine-Pruning trial of seed N.
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
    seeds: Sequence[int] = (0, 1, 2),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train (or reuse) the benchmark runs of every seed and write ``summary.csv``, ``compaction.csv`` and the rest.

    A run that fails (:class:`~adafilter_lib.core.errors.RunFailed`) is printed and left out, as ``tune`` does:
    ``prune_after_finetune`` then needs a finished ``fine_pruning`` run, a compaction sweep its AdaFilter run.

    Returns:
        (summary table, compaction table), one block of rows per seed (column ``seed``).
    """
    if any(item.split("=", 1)[0].strip() == "seed" for item in overrides):
        raise KitError("prune-bench takes its seeds from --seeds (e.g. --seeds 0 1 2), not from --set seed=N")
    start = time.perf_counter()
    main = f"{runs_root}/main"
    per_seed = [
        _bench_seed(runs_root, dataset, n_per_class, [*overrides, f"seed={seed}"], thresholds, progress) for seed in seeds
    ]
    summary = pd.concat([table for table, _, _ in per_seed], ignore_index=True)
    compaction = pd.concat([table for _, table, _ in per_seed], ignore_index=True)
    out = Path(out_dir)
    files.atomic_write_text(out / "summary.csv", summary.to_csv(index=False, lineterminator="\n"))
    files.atomic_write_text(out / "compaction.csv", compaction.to_csv(index=False, lineterminator="\n"))
    build_tables(main, out, method_order=[*PRUNING_METHODS, "adafilter"])
    write_paired_comparison(load_runs(main), "finetune", out)  # every seed trained under main, paired by seed
    for seed, (table, _, configs) in zip(seeds, per_seed):
        _write_front(configs, table, out / f"front_seed{seed}.png")
    command = command or (
        f"python -m adafilter_lib prune-bench --dataset {dataset} --n-per-class {n_per_class}"
        + (f" --seeds {' '.join(map(str, seeds))}" if list(seeds) != [0, 1, 2] else "")
        + (f" --runs {runs_root}" if runs_root != "runs/pruning" else "")
        + (f" --out {out_dir}" if out_dir != "results/pruning" else "")
        + (f" --set {' '.join(overrides)}" if overrides else "")
    )
    readme = _readme(command, time.perf_counter() - start, per_seed[0][2]["finetune"], runs_root, seeds)
    files.atomic_write_text(out / "README.md", readme)
    return summary, compaction


def _bench_seed(runs_root: str, dataset: str, n_per_class: int, overrides: Sequence[str], thresholds, progress: bool):
    """One seed of the benchmark: (summary rows, compaction rows, the finished runs' configs by method)."""
    main, penalty = f"{runs_root}/main", f"{runs_root}/usage_penalty"
    configs = {m: bench_config(main, m, dataset, n_per_class, overrides) for m in PRUNING_METHODS}
    trainers = {"finetune": fit, "fine_pruning": run_fine_pruning, "prune_after_finetune": run_prune_after_finetune}
    for method, cfg in configs.items():
        if method != "prune_after_finetune" or runs.is_finished(configs["fine_pruning"].run_dir()):
            _train_or_report(trainers[method], cfg, progress)
    variants = {
        "adafilter": bench_config(main, "adafilter", dataset, n_per_class, overrides),
        "adafilter_usage_penalty": bench_config(penalty, "adafilter", dataset, n_per_class, [*overrides, *USAGE_PENALTY]),
    }
    sweeps = []
    for variant, cfg in variants.items():
        if _train_or_report(fit, cfg, progress):
            sweeps.append(recorded_compaction_sweep(cfg.run_dir(), thresholds, progress=progress).assign(variant=variant))
    seed = configs["finetune"].seed
    if not runs.is_finished(configs["finetune"].run_dir()) or not sweeps:
        raise KitError(
            f"the pruning benchmark needs a finished fine-tuning and AdaFilter run of seed {seed} under '{main}'; "
            "see the failures above"
        )
    compaction = pd.concat(sweeps, ignore_index=True)
    adafilter_dir = variants["adafilter"].run_dir()
    reference = runs.read_summary(adafilter_dir)["top1_err"] if runs.is_finished(adafilter_dir) else float("nan")
    compaction["top1_err_vs_adafilter"] = compaction["top1_err"] - reference  # vs. the default AdaFilter, uncompacted
    compaction = compaction[["variant", *[c for c in compaction.columns if c != "variant"]]]
    configs = {m: cfg for m, cfg in configs.items() if runs.is_finished(cfg.run_dir())}
    summary = summary_table(configs)
    summary.insert(0, "seed", seed)
    compaction.insert(0, "seed", seed)
    return summary, compaction, configs


def _train_or_report(train, cfg: RunConfig, progress: bool) -> bool:
    """Train (or reuse) one benchmark run; a failed run prints its one line and gives False."""
    try:
        train(cfg, resume=True, progress=progress)
        return True
    except RunFailed as err:
        print(f"failed: {err}", flush=True)
        return False


def _write_front(configs: dict[str, RunConfig], summary: pd.DataFrame, path: Path) -> None:
    if "fine_pruning" not in configs:
        return
    trials = pd.read_csv(configs["fine_pruning"].run_dir() / TRIALS_FILE)
    refs = {f"{r.method} (val)": (r.compression, r.val_top1_err) for r in summary.itertuples()}
    save_figure(front_figure(trials, references=refs), path, dpi=120)
