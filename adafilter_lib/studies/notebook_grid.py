"""The training notebooks' grid: configs for (dataset, method, seed), fit-or-reuse, and the SMOKE recipe.

The default grid is the demo's (``adafilter_lib/configs/demo.yaml``), so notebooks pointed at the
demo's runs folder reuse what ``make demo`` trained. ``smoke=True`` swaps in a recipe that finishes
in seconds on CPU (the notebook tests run it): 4 scikit-learn digits per class at 32 px, a
random-weight ResNet-18, one epoch.

A finished run is reused only if its ``config.yaml`` equals the requested config; a run of the same
name trained with other settings (say 6 epochs where 12 are asked) is an error, not a silent reuse.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..core.config import RunConfig
from ..core.config_files import packaged_recipe
from ..core.runs import is_finished
from ..training.trainer import fit
from .demo import demo_configs
from .recipe import grid, method_grid

# The seconds-long SMOKE recipe (adafilter_lib/configs/recipes/smoke.yaml): datasets, backbone, epochs, seeds
# and everything else that makes it fast.
_SMOKE = packaged_recipe("smoke")
SMOKE_DATASETS: tuple[tuple[str, int], ...] = tuple((str(d), int(n)) for d, n in _SMOKE["datasets"].items())
SMOKE_BACKBONE, SMOKE_EPOCHS, SMOKE_SEEDS = str(_SMOKE["backbone"]), int(_SMOKE["epochs"]), tuple(_SMOKE["seeds"])
SMOKE_OVERRIDES: tuple[str, ...] = tuple(_SMOKE["set"])


def grid_configs(
    runs_root: str | Path,
    methods: Sequence[str],
    datasets: Sequence[Sequence],
    backbone: str,
    epochs: int,
    seeds: Sequence[int],
    smoke: bool = False,
) -> list[RunConfig]:
    """One config per (dataset, seed, method), in the order they train.

    Args:
        runs_root: where the runs go (e.g. ``"../runs/demo"`` from ``notebooks/``).
        methods: method names (``python -m adafilter_lib list``).
        datasets: ``(dataset, labelled images per class)`` pairs.
        backbone: ``model.backbone``.
        epochs: ``optim.epochs``.
        seeds: run seeds.
        smoke: ignore datasets, backbone, epochs and seeds and use the seconds-long SMOKE recipe.

    Returns:
        Validated :class:`RunConfig` objects (names and values are checked here, before any training).
    """
    if smoke:
        smoke_settings = (*SMOKE_OVERRIDES, f"model.backbone={SMOKE_BACKBONE}", f"optim.epochs={SMOKE_EPOCHS}")
        return grid(method_grid(runs_root, methods, dict(SMOKE_DATASETS), SMOKE_SEEDS, settings=smoke_settings))
    pairs = [(str(d), int(n)) for d, n in datasets]
    return demo_configs(str(runs_root), seeds, pairs, methods, [f"model.backbone={backbone}", f"optim.epochs={epochs}"])


def smoke_config(runs_root: str | Path, method: str) -> RunConfig:
    """The SMOKE recipe's config of ``method`` (what the SMOKE notebooks train; tests reuse it)."""
    return grid_configs(runs_root, [method], SMOKE_DATASETS, SMOKE_BACKBONE, SMOKE_EPOCHS, SMOKE_SEEDS, smoke=True)[0]


def fit_or_reuse(cfg: RunConfig, progress: bool = False) -> tuple[dict, bool]:
    """Train ``cfg`` unless a finished run with the same config exists.

    Returns:
        ``(summary, reused)``.

    Raises:
        KitError: a finished run of the same name was trained with a different config
            (:func:`adafilter_lib.training.trainer.fit` checks it).
    """
    reused = is_finished(cfg.run_dir())
    return fit(cfg, progress=progress and not reused), reused


def fit_grid(configs: Sequence[RunConfig], progress: bool = False) -> pd.DataFrame:
    """Fit or reuse every config, printing one line per run.

    Returns:
        One row per run: ``run``, ``method``, ``dataset``, ``seed``, ``top1_err``, ``reused``, ``seconds``
        (wall time of this call: near zero for a reused run).
    """
    rows = []
    for index, cfg in enumerate(configs, 1):
        start = time.perf_counter()
        summary, reused = fit_or_reuse(cfg, progress=progress)
        seconds = time.perf_counter() - start
        print(
            f"[{index}/{len(configs)}] {cfg.resolved_run_name()}: {'reused' if reused else 'trained'}, "
            f"test error {summary['top1_err']:.2f}%",
            flush=True,
        )
        rows.append(
            {
                "run": cfg.resolved_run_name(),
                "method": cfg.method.name,
                "dataset": cfg.data.dataset,
                "seed": cfg.seed,
                "top1_err": summary["top1_err"],
                "reused": reused,
                "seconds": round(seconds, 1),
            }
        )
    return pd.DataFrame(rows)
