"""The compression front of a pruning study: each pruning method's test error at each target compression, paired
by seed with dense fine-tuning, written by ``tune`` beside the comparison (``front.csv``, ``front.png``).

A recipe gives every (method, target) its own row (``fine_pruning_4x``: ``method.fine_pruning.target_compression=4``),
so that every point has its validation-chosen cell and its seeds; a ``fine_pruning`` row without a target is
the point Fine-Pruning's search chooses itself (``target_compression`` empty). Structured rows
(``channel_pruning``) go to ``structured.csv`` instead, with their MACs, parameter and latency ratios.
"""

from __future__ import annotations

import math
import re
from typing import Optional

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from .results import standard_error

FRONT_COLUMNS = ["method", "target_compression", "compression", "top1_err", "diff_vs_dense", "diff_se", "seeds"]
STRUCTURED_COLUMNS = [
    "variant",
    "macs_ratio",
    "params_ratio",
    "latency_ratio_b1",
    "latency_ratio_b32",
    "top1_err",
    "diff_vs_dense",
    "diff_se",
    "seeds",
]


def pruning_front(records: pd.DataFrame, reference: str) -> Optional[pd.DataFrame]:
    """One line per pruning row's chosen cell and dataset (rows without ``compression`` in their summaries are
    not pruning rows), in recipe order; None when the study has no pruning row.

    Args:
        records: :func:`adafilter_lib.studies.tune.selection_runs` as a frame (``row, method, dataset, seed,
            chosen, status, top1_err, compression`` and, for runs pruned to a budget, ``target_compression``).
        reference: the dense row the differences are paired with, by seed.
    Returns:
        Columns ``dataset, row`` and :data:`FRONT_COLUMNS`: means over seeds of ``compression`` (achieved, from
        actual zeros) and ``top1_err``; ``diff_vs_dense`` (points) and ``diff_se`` (standard error of the paired
        differences; empty with one pair).
    """
    return _paired_lines(records, reference, "compression", ["method", "target_compression", "compression"], FRONT_COLUMNS)


def pruning_tables(records: pd.DataFrame, reference: Optional[str]) -> dict[str, Optional[pd.DataFrame]]:
    """Every pruning table of a study's records: ``sparsity`` (:func:`stage_sparsity`), and with a reference row
    ``structured`` (:func:`structured_table`) and ``front`` (:func:`pruning_front` of the other rows: channel rows
    are not on the weight front); each None when the study has no such rows."""
    tables = {"sparsity": stage_sparsity(records), "structured": None, "front": None}
    if reference is None:
        return tables
    structured = structured_table(records, reference)
    unstructured = records if structured is None else records[~records["row"].isin(structured["row"])]
    return {**tables, "structured": structured, "front": pruning_front(unstructured, reference)}


def structured_table(records: pd.DataFrame, reference: str) -> Optional[pd.DataFrame]:
    """One line per ``channel_pruning`` row's chosen cell and dataset: ``dataset, row`` and
    :data:`STRUCTURED_COLUMNS` (ratios are dense ÷ pruned, means over seeds: more than 1 is smaller or faster;
    the latency ratios were timed inside each run, dense and pruned interleaved); None without such rows."""
    if "macs_ratio" not in records:
        return None
    means = ["macs_ratio", "params_ratio", "latency_ratio_b1", "latency_ratio_b32"]
    table = _paired_lines(records, reference, "macs_ratio", means, STRUCTURED_COLUMNS)
    return None if table is None else table.assign(variant=table["row"])[["dataset", "row", *STRUCTURED_COLUMNS]]


def _paired_lines(
    records: pd.DataFrame, reference: str, marker: str, kept: list[str], columns: list[str]
) -> Optional[pd.DataFrame]:
    """Per chosen (row, dataset) whose runs have ``marker``: the ``kept`` columns (first value of ``method`` and
    ``target_compression``, the mean of the others), mean test error, paired difference to ``reference`` and its SE."""
    if marker not in records:
        return None
    chosen = records[records["chosen"]]
    if "status" in chosen:
        chosen = chosen[chosen["status"] == "finished"]
    pruned = chosen[chosen[marker].notna() & (chosen["row"] != reference)]
    if pruned.empty:
        return None
    lines = []
    for (row, dataset), group in pruned.groupby(["row", "dataset"], sort=False):
        dense = chosen[(chosen["row"] == reference) & (chosen["dataset"] == dataset)].set_index("seed")["top1_err"]
        diffs = group.set_index("seed")["top1_err"].sub(dense).dropna()
        line = {"dataset": dataset, "row": row}
        for column in kept:
            if column in ("method", "target_compression"):
                line[column] = group[column].iloc[0] if column in group else math.nan
            else:
                line[column] = group[column].mean()
        line.update(
            top1_err=group["top1_err"].mean(),
            diff_vs_dense=diffs.mean() if len(diffs) else math.nan,
            diff_se=standard_error(diffs),
            seeds=len(group),
        )
        lines.append(line)
    return pd.DataFrame(lines).reindex(columns=["dataset", "row", *[c for c in columns if c != "variant"]])


def front_markdown(front: pd.DataFrame) -> str:
    """The front as the README quotes it (``front.md``): per dataset, one line per target compression and a last
    line for the points a search chose itself, one column per family of rows (the row's name without its target:
    ``fine_pruning_4x`` and ``fine_pruning_8x`` are ``fine_pruning``, ``fine_pruning_global_4x`` is
    ``fine_pruning_global``), each cell the points above dense ``± SE`` of the paired differences (the seeds' mean
    achieved compression beside a searched point).

    Args:
        front: :func:`pruning_front` output.
    """
    blocks = []
    for dataset, part in front.groupby("dataset", sort=False):
        cells: dict[tuple[str, str], str] = {}
        for line in part.itertuples():
            target = line.target_compression
            searched = pd.isna(target)
            family = line.row if searched else re.sub(rf"_{float(target):g}x(?=_|$)", "", line.row)
            key = "searched" if searched else f"{float(target):g}x"
            text = _signed(line.diff_vs_dense) + ("" if pd.isna(line.diff_se) else f" ± {line.diff_se:.2f}")
            cells[(key, family)] = text + (f" ({line.compression:.2f}x)" if searched else "")
        families = list(dict.fromkeys(family for _, family in cells))
        targets = sorted({key for key, _ in cells if key != "searched"}, key=lambda key: float(key[:-1]))
        keys = targets + (["searched"] if any(key == "searched" for key, _ in cells) else [])
        header = f"| {dataset} | " + " | ".join(families) + " |\n|---|" + "---|" * len(families) + "\n"
        body = "".join(f"| {key} | " + " | ".join(cells.get((key, f), "") for f in families) + " |\n" for key in keys)
        blocks.append(header + body)
    note = "Test error in points above dense fine-tuning, ± the SE of the paired differences over seeds.\n\n"
    return note + "\n".join(blocks)


def _signed(points: float) -> str:
    """``+1.23`` / ``−0.24`` (a typographic minus, as in the docs' tables)."""
    return f"{points:+.2f}".replace("-", "−")


def front_plot(front: pd.DataFrame, dense: dict[str, float]) -> Figure:
    """Test error against achieved compression, one line per method (its targets), with ± the paired SE, and
    dense fine-tuning's error per dataset as a dashed line.

    Args:
        front: :func:`pruning_front` output; dense: {dataset: the reference row's mean test error}.
    """
    datasets = list(dict.fromkeys(front["dataset"]))
    fig = Figure(figsize=(5.5 * len(datasets), 4), layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    times = FuncFormatter(lambda value, _: f"{value:g}x")
    for ax, dataset in zip(axes, datasets):
        part = front[front["dataset"] == dataset]
        for method, group in part.groupby("method", sort=False):
            targeted = group[group["target_compression"].notna()].sort_values("compression")
            if len(targeted):
                ax.errorbar(
                    targeted["compression"],
                    targeted["top1_err"],
                    yerr=targeted["diff_se"].fillna(0),
                    marker="o",
                    capsize=3,
                    label=method,
                )
            searched = group[group["target_compression"].isna()]
            if len(searched):
                ax.scatter(
                    searched["compression"], searched["top1_err"], marker="*", s=140, label=f"{method} (its search's choice)"
                )
        if dataset in dense:
            ax.axhline(dense[dataset], color="black", ls="--", lw=1, label="dense fine-tuning")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(times)
        ax.xaxis.set_minor_formatter(times)
        ax.set_title(dataset)
        ax.set_xlabel("compression (weights / nonzero weights)")
        ax.set_ylabel("test top-1 error (%), mean over seeds")
        ax.legend(fontsize=7)
    return fig


def stage_sparsity(records: pd.DataFrame) -> Optional[pd.DataFrame]:
    """Per unstructured pruning row's chosen runs, the sparsity of every stage (from each run's ``sparsity.csv``:
    actual zeros) over seeds: ``dataset, row, stage, weights, sparsity`` (the mean), ``sparsity_min``,
    ``sparsity_max`` and ``seeds``, so that a search's allocation can be seen to move (or not) from seed to seed;
    None when no chosen run has the file. Channel-pruned runs are left out: their stages are smaller, not sparse
    (``structured.csv``)."""
    from pathlib import Path

    frames = []
    chosen = records[records["chosen"]]
    if "status" in chosen:
        chosen = chosen[chosen["status"] == "finished"]
    if "macs_ratio" in chosen:
        chosen = chosen[chosen["macs_ratio"].isna()]
    for record in chosen.itertuples():
        path = Path(record.run_dir) / "sparsity.csv"
        if path.is_file():
            table = pd.read_csv(path).groupby("stage", sort=False)[["weights", "nonzero"]].sum().reset_index()
            frames.append(table.assign(dataset=record.dataset, row=record.row, seed=record.seed))
    if not frames:
        return None
    every = pd.concat(frames, ignore_index=True).assign(sparsity=lambda t: 1.0 - t["nonzero"] / t["weights"])
    grouped = every.groupby(["dataset", "row", "stage"], sort=False).agg(
        weights=("weights", "first"),
        sparsity=("sparsity", "mean"),
        sparsity_min=("sparsity", "min"),
        sparsity_max=("sparsity", "max"),
        seeds=("seed", "nunique"),
    )
    return grouped.reset_index()
