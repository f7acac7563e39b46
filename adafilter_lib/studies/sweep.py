"""``python -m adafilter_lib sweep``: run a grid of (dataset, method, seed), shardable and resumable.

Every run goes through :func:`adafilter_lib.training.trainer.fit` with ``resume=True``: finished runs are
skipped, unfinished ones continue from their checkpoint. ``--shard i/n`` takes every n-th run of
the sorted grid, so n machines share one sweep without overlap. With more than one GPU each run is
launched through ``torchrun`` (DDP). The sweep ends by building the error table of every finished
run under the runs root, next to the AdaFilter paper's reported average error reduction.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
import torch
import yaml

from ..analysis.results import build_tables, markdown_table
from ..core import files, runs
from ..core.config import RunConfig, load_config, to_dict
from ..core.config_files import packaged_config_path
from ..core.errors import KitError, RunFailed
from ..training.trainer import fit
from .recipe import grid as recipe_grid
from .recipe import method_grid

PAPER_REDUCTION = 2.54  # AdaFilter vs fine-tuning, mean top-1 error over 7 datasets (points; Guo et al. 2020)
# Training-pool sizes of the paper datasets, for --dry-run estimates only.
TRAIN_IMAGES = {
    "stanford_dogs": 12000,
    "mit_indoor67": 5360,
    "caltech256_30": 7680,
    "caltech256_60": 15360,
    "fgvc_aircraft": 6667,
    "ucf101": 7629,
    "omniglot_decathlon": 17853,
    "uc_merced_full": 1680,
    "dtd": 3760,
}


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (1-based i) -> (i, n)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise KitError(f"--shard '{text}' is not of the form i/n (e.g. 1/4)") from None
    if not 1 <= index <= count:
        raise KitError(f"--shard {text}: i must lie between 1 and n")
    return index, count


def paper_config_dir() -> Path:
    """The per-dataset paper configs shipped inside the package (``adafilter_lib/configs/paper/``)."""
    return packaged_config_path("paper")


def plan(
    datasets: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    runs_root: str,
    config_dir: Optional[str] = None,
    overrides: Sequence[str] = (),
    config: Optional[str] = None,
) -> list[RunConfig]:
    """The full grid, sorted by run name.

    Each dataset's settings come from ``<config_dir>/<dataset>.yaml`` (default: the packaged paper configs),
    or, with ``config``, from that one file for every dataset (``"defaults"``: the library defaults).

    Raises:
        KitError: a dataset has no config in ``config_dir`` (a silent fallback would train another protocol).
    """
    folder = Path(config_dir) if config_dir is not None else paper_config_dir()
    bases: dict[str, Optional[Path]] = {}
    for dataset in datasets:
        if config is not None:
            bases[dataset] = None if config == "defaults" else Path(config)
        else:
            bases[dataset] = folder / f"{dataset}.yaml"
            if not bases[dataset].is_file():
                known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
                raise KitError(
                    f"no config for dataset '{dataset}' in '{folder}' (has: {known}); write "
                    f"{dataset}.yaml there, or give every dataset one file with --config FILE"
                )
    if len(set(seeds)) != len(seeds) or len(set(methods)) != len(methods) or len(set(datasets)) != len(datasets):
        raise KitError("the sweep grid names the same run twice; remove repeated datasets, methods or seeds")
    # each task keeps its base config's labelled images per class
    shots = {d: load_config(bases[d], [f"data.dataset={d}"]).data.n_per_class for d in datasets}
    study = method_grid(runs_root, methods, shots, seeds, overrides=overrides, dataset_bases=bases)
    grid = recipe_grid(study)
    names = [c.resolved_run_name() for c in grid]
    if len(set(names)) != len(names):
        raise KitError("the sweep grid names the same run twice; remove repeated datasets, methods or seeds")
    return sorted(grid, key=RunConfig.resolved_run_name)


def shard(grid: list[RunConfig], index: int, count: int) -> list[RunConfig]:
    """Runs of shard ``index`` (1-based) out of ``count``: every count-th run of the sorted grid."""
    return grid[index - 1 :: count]


def estimate_hours(cfg: RunConfig, bench_dir: str = "results/bench") -> Optional[float]:
    """Hours for one run from a measured GPU step time (results/bench) and the dataset's size; None if unknown."""
    images = TRAIN_IMAGES.get(cfg.data.dataset)
    record = Path(bench_dir) / f"{cfg.model.backbone}_{cfg.data.resolution}px_b{cfg.data.batch_size}_cuda.json"
    if images is None or not record.is_file():
        return None
    bench = yaml.safe_load(record.read_text())
    kind = "adafilter" if cfg.method.name.startswith("adafilter") else "finetune"
    steps = cfg.optim.epochs * math.ceil(images * (1 - cfg.data.val_fraction) / cfg.data.batch_size)
    return steps * bench[f"train_{kind}_median_s"] / 3600


def _run_with_torchrun(cfg: RunConfig, gpus: int) -> None:
    config_path = Path(cfg.runs_root) / ".sweep" / f"{cfg.resolved_run_name()}.yaml"
    files.atomic_write_text(config_path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus}",
        "-m",
        "adafilter_lib",
        "train",
        "--config",
        str(config_path),
        "--resume",
        "--no-progress",
    ]
    if subprocess.run(command).returncode != 0:
        raise KitError(f"run {cfg.resolved_run_name()} failed under torchrun; see its output above, fix, and re-run the sweep")


def run_sweep(
    grid: list[RunConfig],
    out_dir: str,
    dry_run: bool = False,
    gpus: Optional[int] = None,
    progress: bool = True,
    method_order: Optional[Sequence[str]] = None,
) -> Optional[pd.DataFrame]:
    """Run (or with ``dry_run`` only print) ``grid``; then build and print the error table."""
    gpus = torch.cuda.device_count() if gpus is None else gpus
    if dry_run:
        total = 0.0
        known = True
        for cfg in grid:
            hours = estimate_hours(cfg)
            known &= hours is not None
            total += hours or 0.0
            print(
                f"{runs.run_state(cfg.run_dir()):>10}  {cfg.resolved_run_name()}  "
                + (f"~{hours:.2f} h" if hours is not None else "? h")
            )
        print(
            f"{len(grid)} runs; "
            + (
                f"about {total:.1f} GPU-hours (measured step times in results/bench)"
                if known
                else "no estimate for runs marked '?': measure the step time on your GPU first with "
                "`python -m adafilter_lib bench --backbone resnet50 --res 224 --batch 64 --device cuda --out results/bench`"
            )
        )
        return None
    failed = []
    for number, cfg in enumerate(grid, 1):
        if progress:
            print(f"[{number}/{len(grid)}] {cfg.resolved_run_name()} ({runs.run_state(cfg.run_dir())})", flush=True)
        if runs.is_finished(cfg.run_dir()):
            continue
        try:
            if gpus > 1:
                _run_with_torchrun(cfg, gpus)
            else:
                fit(cfg, resume=True, progress=progress)
        except RunFailed as err:  # a failed run is left out of the table, not the end of the sweep
            print(f"failed: {err}", flush=True)
            failed.append(cfg.resolved_run_name())
    methods = list(method_order or dict.fromkeys(c.method.name for c in grid))
    table = build_tables(grid[0].runs_root, out_dir, method_order=methods)
    print(markdown_table(table))
    if failed:
        print(f"{len(failed)} failed run(s) left out of the table: {', '.join(failed)}", flush=True)
    print(reduction_line(table))
    return table


def reduction_line(table: pd.DataFrame) -> str:
    """AdaFilter's measured mean error reduction over fine-tuning beside the paper's reported one."""
    wide = table.pivot(index="dataset", columns="method", values="top1_err")
    if not {"finetune", "adafilter"} <= set(wide.columns):
        return f"(paper: AdaFilter reduces fine-tuning's mean error by {PAPER_REDUCTION} points; needs both methods here)"
    both = wide[["finetune", "adafilter"]].dropna()
    measured = (both["finetune"] - both["adafilter"]).mean()
    return (
        f"AdaFilter vs fine-tuning, mean over {len(both)} dataset(s): {measured:+.2f} points error reduction "
        f"(paper, 7 datasets, ResNet-50: {PAPER_REDUCTION:+.2f})"
    )
