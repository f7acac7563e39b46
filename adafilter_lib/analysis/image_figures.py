"""One image's gate figures: the panels of the gate inspector (:mod:`adafilter_lib.analysis.widgets`).

Built without pyplot, like :mod:`adafilter_lib.analysis.viz`; ``viz.figure_png`` and ``viz.save_figure`` render
and write them.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .viz import GATE_CMAP, require_columns


def image_profile(profile: pd.DataFrame, ax: Optional[Axes] = None) -> Figure:
    """Per-layer fraction of fine-tuned filters: one image against its class and the dataset averages.

    Args:
        profile: :func:`adafilter_lib.analysis.records.image_profile` output (``layer_index, series, frac_finetuned``).
        ax: draw into this axes (of a larger figure) instead of a new figure.
    """
    require_columns(profile, ["layer_index", "series", "frac_finetuned"], "image_profile")
    if ax is None:
        ax = Figure(figsize=(6.0, 3.2), layout="constrained").subplots()
    styles = {
        "this image": dict(lw=2.0, marker="o", ms=3),
        "class average": dict(lw=1.2, ls="--"),
        "dataset average": dict(lw=1.2, ls=":", color="gray"),
    }
    for series, rows in profile.groupby("series", sort=False):
        ax.plot(rows["layer_index"], rows["frac_finetuned"], label=series, **styles.get(series, {}))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("layer (execution order)")
    ax.set_ylabel("fraction fine-tuned")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    return ax.figure


def gate_grid(gates: np.ndarray) -> np.ndarray:
    """Lay a layer's C_out gates out row by row on a near-square grid (NaN pads the last row).

    Shape:
        gates (C_out,) -> (ceil(C_out / W), W) with ``W = ceil(sqrt(C_out))``.
    """
    gates = np.asarray(gates, dtype=float).ravel()
    width = max(1, math.ceil(math.sqrt(gates.size)))
    grid = np.full(math.ceil(gates.size / width) * width, np.nan)
    grid[: gates.size] = gates
    return grid.reshape(-1, width)


def gate_map(gates: np.ndarray, layer: str = "", ax: Optional[Axes] = None) -> Figure:
    """One image's gates of one layer as a grid of cells (filter ``i`` at row ``i // W``, column ``i % W``).

    Args:
        gates: (C_out,) gate per filter, 1 = fine-tuned.
        layer: the layer's name, for the title.
        ax: draw into this axes instead of a new figure.
    """
    if ax is None:
        ax = Figure(figsize=(3.6, 3.4), layout="constrained").subplots()
    grid = gate_grid(gates)
    ax.imshow(grid, cmap=GATE_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("bright: fine-tuned filter · dark: pretrained", fontsize=7)
    ax.set_title(f"{layer}: {np.nansum(grid):.0f}/{np.asarray(gates).size} fine-tuned", fontsize=9)
    return ax.figure


def inspector_figure(image: np.ndarray, title: str, profile: pd.DataFrame, gates: np.ndarray, layer: str) -> Figure:
    """The gate inspector's panel: the image, its per-layer profile, and its gate map for ``layer``.

    Shape:
        image (H, W, 3) floats in [0, 1]; gates (C_out,).
    """
    fig = Figure(figsize=(11.0, 3.2), layout="constrained")
    left, middle, right = fig.subplots(1, 3, width_ratios=[1.0, 2.2, 1.1])
    left.imshow(np.clip(image, 0.0, 1.0), interpolation="nearest")
    left.set_axis_off()
    left.set_title(title, fontsize=9)
    image_profile(profile, ax=middle)
    middle.set_title("fine-tuned filters per layer", fontsize=9)
    gate_map(gates, layer, ax=right)
    return fig
