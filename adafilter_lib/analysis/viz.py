"""Figures from tidy DataFrames (the frames of :mod:`adafilter_lib.analysis.records` and :mod:`adafilter_lib.analysis.results`).

Every function takes a DataFrame (or, for one image, arrays) and returns a ``matplotlib.figure.Figure``
built without pyplot: nothing is drawn into a global figure list, so a notebook shows a figure only
when it displays the return value, and a widget can render hundreds of them without leaking memory.
:func:`save_figure` writes one atomically (``results/figures/`` in the notebooks). One image's gate
figures (the gate inspector's panels) are in :mod:`adafilter_lib.analysis.image_figures`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..core.errors import KitError
from ..core.files import atomic_write_bytes

GATE_CMAP = "viridis"  # 0 = pretrained filter (dark), 1 = fine-tuned filter (bright)


def require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise a one-line KitError when ``frame`` lacks ``columns`` or is empty (``what`` names the figure)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KitError(f"{what} needs columns {', '.join(columns)}; missing: {', '.join(missing)}")
    if frame.empty:
        raise KitError(f"{what} got an empty table; train or select some runs first")


def _one_run(frame: pd.DataFrame, what: str) -> None:
    if "run_dir" in frame.columns and frame["run_dir"].nunique() > 1:
        raise KitError(f"{what} shows one run; filter the table first, e.g. frame[frame.run_dir == frame.run_dir.iloc[0]]")


def _layer_ticks(ax: Axes, names: Sequence[str], axis: str = "x") -> None:
    """Layer names as tick labels; small, since a Lite0 has ~50 gated layers."""
    positions = np.arange(len(names)) + (0.5 if axis.endswith("heat") else 0.0)
    if axis.startswith("x"):
        ax.set_xticks(positions, names, rotation=90, fontsize=6)
    else:
        ax.set_yticks(positions, names, rotation=0, fontsize=6)


def training_curves(curves: pd.DataFrame, metric: str = "top1_err", hue: str = "method") -> Figure:
    """Train (dashed) and validation (solid) curves per epoch, one panel per dataset.

    Args:
        curves: :func:`adafilter_lib.analysis.records.curves` output (``dataset, epoch, split, <metric>, <hue>``).
        metric: the value column.
        hue: column that colours the lines (e.g. ``method``); seeds of one colour form a mean line with
            a ±1 std band.
    """
    require_columns(curves, ["dataset", "epoch", "split", metric, hue], "training_curves")
    datasets = sorted(curves["dataset"].unique())
    fig = Figure(figsize=(4.5 * len(datasets) + 1.5, 3.6), layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    order = list(dict.fromkeys(curves[hue]))
    for i, (ax, dataset) in enumerate(zip(axes, datasets)):
        sns.lineplot(
            data=curves[curves["dataset"] == dataset],
            x="epoch",
            y=metric,
            hue=hue,
            hue_order=order,
            style="split",
            style_order=["val", "train"],
            dashes={"val": "", "train": (4, 2)},
            errorbar="sd",
            marker="o",
            markersize=3,
            ax=ax,
            legend=i == len(datasets) - 1,
        )
        ax.set_title(dataset)
        ax.set_ylabel({"top1_err": "top-1 error (%)", "loss": "loss"}.get(metric, metric))
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # one legend, outside the data
    return fig


def _run_label(row: pd.Series) -> str:
    return f"{row['dataset']} · {row['method']} · s{row['seed']}"


def layer_usage(usage: pd.DataFrame) -> Figure:
    """Per-layer fraction of fine-tuned filters with its spread across images (±1 std band), one line per run.

    Args:
        usage: :func:`adafilter_lib.analysis.records.load_gate_usage` output; only ``group == "all"`` rows are used.
    """
    require_columns(
        usage,
        ["run_dir", "dataset", "method", "seed", "layer", "layer_index", "group", "frac_finetuned", "frac_std"],
        "layer_usage",
    )
    rows = usage[usage["group"] == "all"].sort_values("layer_index")
    fig = Figure(figsize=(max(6.0, 0.16 * rows["layer_index"].nunique() + 2), 3.6), layout="constrained")
    ax = fig.subplots()
    for _, run in rows.groupby("run_dir", sort=False):
        x, y, spread = run["layer_index"].to_numpy(), run["frac_finetuned"].to_numpy(), run["frac_std"].to_numpy()
        (line,) = ax.plot(x, y, marker="o", markersize=3, label=_run_label(run.iloc[0]))
        ax.fill_between(x, y - spread, y + spread, color=line.get_color(), alpha=0.2)
    _layer_ticks(ax, rows.drop_duplicates("layer_index")["layer"].tolist())
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("fraction fine-tuned")
    ax.set_title("Fine-tuned filters per layer (test split; band: ±1 std across images)", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def layer_class_heatmap(usage: pd.DataFrame) -> Figure:
    """Class x layer heatmap of the fraction of fine-tuned filters for one run.

    Args:
        usage: one run's rows of :func:`adafilter_lib.analysis.records.load_gate_usage` (class rows are those with
            ``group != "all"``).
    """
    require_columns(usage, ["layer", "layer_index", "group", "frac_finetuned"], "layer_class_heatmap")
    _one_run(usage, "layer_class_heatmap")
    classes = usage[usage["group"] != "all"]
    grid = classes.pivot(index="group", columns="layer_index", values="frac_finetuned")
    grid = grid.reindex(index=list(dict.fromkeys(classes["group"])))  # the dataset's class order
    names = classes.drop_duplicates("layer_index").sort_values("layer_index")["layer"].tolist()
    fig = Figure(figsize=(max(6.0, 0.18 * len(names) + 2), max(2.5, 0.25 * len(grid) + 1.5)), layout="constrained")
    ax = fig.subplots()
    sns.heatmap(grid, ax=ax, cmap=GATE_CMAP, vmin=0.0, vmax=1.0, cbar_kws={"label": "fraction fine-tuned"})
    _layer_ticks(ax, names, axis="xheat")
    ax.set_xlabel("layer")
    ax.set_ylabel("class")
    ax.set_title("Fine-tuned filters by class and layer (test split)")
    return fig


def filter_frequency(frequency: pd.DataFrame) -> Figure:
    """Per-filter selection frequency: one dot per filter, one column per layer.

    A filter at 0 or 1 makes the same choice for every image; dots in between are filters whose
    choice depends on the image (per-example selection).

    Args:
        frequency: :func:`adafilter_lib.analysis.records.filter_frequency` output (``layer, layer_index, frequency``).
    """
    require_columns(frequency, ["layer", "layer_index", "frequency"], "filter_frequency")
    names = frequency.drop_duplicates("layer_index").sort_values("layer_index")["layer"].tolist()
    fig = Figure(figsize=(max(6.0, 0.18 * len(names) + 2), 3.6), layout="constrained")
    ax = fig.subplots()
    sns.stripplot(
        data=frequency,
        x="layer_index",
        y="frequency",
        order=range(len(names)),
        size=2,
        alpha=0.5,
        jitter=0.3,
        native_scale=False,
        legend=False,
        ax=ax,
    )
    _layer_ticks(ax, names)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("layer")
    ax.set_ylabel("chose fine-tuned (fraction of images)")
    ax.set_title("Per-filter selection frequency (test split)")
    return fig


def usage_over_epochs(usage: pd.DataFrame) -> Figure:
    """Layer x epoch heatmap of the validation fraction of fine-tuned filters for one run.

    Args:
        usage: one run's rows of :func:`adafilter_lib.analysis.records.usage_over_epochs`.
    """
    require_columns(usage, ["epoch", "layer", "layer_index", "frac_finetuned"], "usage_over_epochs")
    _one_run(usage, "usage_over_epochs")
    grid = usage.pivot(index="layer_index", columns="epoch", values="frac_finetuned").sort_index()
    names = usage.drop_duplicates("layer_index").sort_values("layer_index")["layer"].tolist()
    fig = Figure(figsize=(max(4.0, 0.5 * grid.shape[1] + 2.5), max(3.0, 0.14 * len(names) + 1.5)), layout="constrained")
    ax = fig.subplots()
    sns.heatmap(grid, ax=ax, cmap=GATE_CMAP, vmin=0.0, vmax=1.0, cbar_kws={"label": "fraction fine-tuned"})
    _layer_ticks(ax, names, axis="yheat")
    ax.set_ylabel("layer")
    ax.set_title("Fine-tuned filters per layer over epochs (validation)")
    return fig


def error_bars(table: pd.DataFrame, metric: str = "top1_err") -> Figure:
    """Grouped bars of an error table: datasets on x, one bar per method, ±1 std over seeds.

    Args:
        table: :func:`adafilter_lib.analysis.results.error_table` output (``method, dataset, <metric>, <metric>_std``).
    """
    require_columns(table, ["method", "dataset", metric, f"{metric}_std"], "error_bars")
    methods, datasets = list(dict.fromkeys(table["method"])), sorted(table["dataset"].unique())
    width = 0.8 / len(methods)
    fig = Figure(figsize=(max(5.0, 1.2 * len(datasets) * max(len(methods), 3) / 3 + 2), 3.6), layout="constrained")
    ax = fig.subplots()
    for i, method in enumerate(methods):
        rows = table[table["method"] == method].set_index("dataset").reindex(datasets)
        x = np.arange(len(datasets)) + (i - (len(methods) - 1) / 2) * width
        # A one-seed cell has no std (NaN): matplotlib then draws no error bar, rather than a 0-wide one.
        ax.bar(x, rows[metric], width, yerr=rows[f"{metric}_std"], capsize=3, label=method)
    ax.set_xticks(np.arange(len(datasets)), datasets)
    ax.set_ylabel("top-1 test error (%)" if metric == "top1_err" else metric)
    seeds = sorted(set(int(n) for n in table["seeds"])) if "seeds" in table.columns else []
    shown = "" if not seeds else f" ({seeds[0]}{'' if len(seeds) == 1 else f'–{seeds[-1]}'} per bar)"
    ax.set_title(f"Test error, mean ± std over seeds{shown}", fontsize=10)
    ax.legend(fontsize=7, ncols=min(len(methods), 3))
    return fig


FIGURE_FORMATS = ("png", "pdf", "svg")


def figure_png(fig: Figure, dpi: int = 100, fmt: str = "png") -> bytes:
    """The figure rendered as bytes of ``fmt`` (PNG by default; ``pdf``, ``svg``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi)
    return buffer.getvalue()


def save_figure(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` at ``path`` atomically (folders created) in the format its suffix names: ``.png``,
    ``.pdf`` or ``.svg`` (vector figures for papers); returns the path.

    Raises:
        KitError: another suffix.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise KitError(f"figure '{path}': unknown format '{path.suffix}'; end the file name in .png, .pdf or .svg")
    atomic_write_bytes(path, figure_png(fig, dpi, fmt))
    return path
