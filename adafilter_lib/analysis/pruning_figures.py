"""Figures of the pruning studies, built without pyplot like :mod:`adafilter_lib.analysis.viz`: the Fine-Pruning
search (every trial and the Pareto front), per-layer sparsity, and AdaFilter compaction's trade-off.

Each function returns a matplotlib ``Figure``; a notebook shows it, :func:`~adafilter_lib.analysis.viz.save_figure`
writes it (PNG, PDF or SVG by suffix).
"""

from __future__ import annotations

from typing import Optional

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter


def pareto_front(trials: pd.DataFrame) -> pd.DataFrame:
    """The finished trials no other trial beats on both accuracy and compression, by compression."""
    done = trials[trials["state"] == "COMPLETE"].sort_values(["compression", "val_top1_err"], ascending=[False, True])
    keep, best_err = [], np.inf
    for index, row in done.iterrows():  # walking from most to least compressed, keep strict improvements in error
        if row["val_top1_err"] < best_err:
            keep.append(index)
            best_err = row["val_top1_err"]
    return done.loc[keep].sort_values("compression").reset_index(drop=True)


def front_figure(trials: pd.DataFrame, references: Optional[dict[str, tuple[float, float]]] = None) -> Figure:
    """Validation accuracy vs compression of every trial (by round), the Pareto front, and reference points.

    Args:
        trials: :func:`adafilter_lib.pruning.search.trials_frame` output (``state, round, compression,
            val_top1_err``).
        references: {label: (compression, top1 error %)} drawn as stars (e.g. the dense and pruned runs).
    """
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    done = trials[trials["state"] == "COMPLETE"]
    for rnd, group in done.groupby("round"):
        ax.scatter(group["compression"], 100 - group["val_top1_err"], s=18, alpha=0.7, label=f"round {rnd} trials")
    front = pareto_front(trials)
    ax.plot(front["compression"], 100 - front["val_top1_err"], color="black", lw=1, label="Pareto front")
    for label, (compression, err) in (references or {}).items():
        ax.scatter([compression], [100 - err], marker="*", s=120, label=label)
    ax.set_xscale("log")
    times = FuncFormatter(lambda value, _: f"{value:g}x")
    ax.xaxis.set_major_formatter(times)
    ax.xaxis.set_minor_formatter(times)
    ax.tick_params(axis="x", which="minor", labelsize=6)
    ax.set_xlabel("compression (weights / nonzero weights)")
    ax.set_ylabel("validation top-1 accuracy (%)")
    ax.legend(fontsize=7)
    return fig


def sparsity_figure(table: pd.DataFrame) -> Figure:
    """Per-layer sparsity (bars, in execution order, one colour per stage) from
    :func:`adafilter_lib.pruning.pruned_state.sparsity_table` (``layer, stage, sparsity``)."""
    fig = Figure(figsize=(8, 3), layout="constrained")
    ax = fig.subplots()
    codes = pd.factorize(table["stage"])[0]
    palette = matplotlib.colormaps["tab10"]
    ax.bar(range(len(table)), 100 * table["sparsity"], color=[palette(c % 10) for c in codes])
    ax.set_xticks(range(len(table)), table["layer"], rotation=90, fontsize=6)
    ax.set_ylabel("sparsity (%)")
    return fig


def compaction_figure(table: pd.DataFrame) -> Figure:
    """Test error change (points) vs extra parameters per task (% of the backbone), one line per ``variant``,
    from :func:`adafilter_lib.pruning.compaction.compaction_sweep` (``threshold, extra_params_frac, top1_err_change``)."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    groups = table.groupby("variant") if "variant" in table.columns else [("adafilter", table)]
    for variant, group in groups:
        ax.plot(100 * group["extra_params_frac"], group["top1_err_change"], marker="o", label=variant)
        for row in group.itertuples():
            ax.annotate(f"{row.threshold:g}", (100 * row.extra_params_frac, row.top1_err_change), fontsize=6)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xlabel("extra parameters per task (% of the backbone)")
    ax.set_ylabel("test error change (points)")
    ax.legend(fontsize=7)
    return fig
