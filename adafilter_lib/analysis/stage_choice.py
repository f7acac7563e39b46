"""Which layers to fine-tune, two answers side by side: the stage surgical fine-tuning chose on validation, and
AdaFilter's share of fine-tuned filter choices in each stage.

:func:`stage_choice` builds the table from a study's run records (``tune``'s ``selection_runs``), and
:func:`stage_choice_figure` draws it with the chosen stage marked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd
import yaml
from matplotlib.figure import Figure

from ..core.model import backbone_spec
from ..core.stages import stages_in_order


def _config(run_dir: str) -> dict:
    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text())


def _surgical_stage(run_dir: str) -> str:
    return _config(run_dir)["method"]["surgical"]["stage"]


def _stage_usage(run_dirs: list[str]) -> pd.Series:
    """{stage: share of fine-tuned choices}: test gates (``gate_usage.csv``, all images), filters weighted equally
    within a stage, then the mean over runs. Stages as ``method.surgical.stage`` names them (``core.stages``)."""
    shares = []
    for run_dir in run_dirs:
        usage = pd.read_csv(Path(run_dir) / "gate_usage.csv")
        usage = usage[usage["group"] == "all"].sort_values("layer_index")
        stages = stages_in_order(list(usage["layer"]), backbone_spec(_config(run_dir)["model"]["backbone"]).stage_pattern)
        weighted = usage.assign(stage=stages, chosen=usage["frac_finetuned"] * usage["num_filters"])
        sums = weighted.groupby("stage", sort=False)[["chosen", "num_filters"]].sum()
        shares.append(sums["chosen"] / sums["num_filters"])
    return pd.concat(shares, axis=1).mean(axis=1)


def stage_choice(
    records: pd.DataFrame, surgical_row: str = "surgical", selection_seeds: Optional[tuple[int, ...]] = None
) -> Optional[pd.DataFrame]:
    """Per dataset and backbone stage: surgical fine-tuning's best validation error over its other settings at that
    stage (the selection runs), whether validation chose the stage, and each gated row's share of fine-tuned
    choices in it (its chosen runs).

    Args:
        records: :func:`adafilter_lib.studies.tune.selection_runs` as a frame.
        selection_seeds: the seeds every cell was trained on (``Study.select_seeds``): the stages are compared on
            those alone (the chosen cell's other seeds would lower its minimum only).
    Returns:
        Columns ``dataset, stage, surgical_val_top1_err, chosen`` and ``frac_finetuned_<row>`` per gated row, stages
        in the surgical grid's order; None without a finished surgical run.
    """
    surgical = records[(records["row"] == surgical_row) & (records["status"] == "finished")]
    if selection_seeds is not None:
        surgical = surgical[surgical["seed"].isin(selection_seeds)]
    if surgical.empty:
        return None
    surgical = surgical.assign(stage=surgical["run_dir"].map(_surgical_stage))
    finished = records[records["chosen"] & (records["status"] == "finished")]
    tables = []
    for dataset, runs in surgical.groupby("dataset", sort=False):
        per_cell = runs.groupby(["stage", "cell"], sort=False)["val_top1_err"].mean()  # mean over the selection seeds
        table = per_cell.groupby("stage", sort=False).min().rename("surgical_val_top1_err").reset_index()
        picked = set(runs.loc[runs["chosen"], "stage"])
        table = table.assign(dataset=dataset, chosen=table["stage"].isin(picked))
        for row, group in finished[finished["dataset"] == dataset].groupby("row", sort=False):
            dirs = [d for d in group["run_dir"] if (Path(d) / "gate_usage.csv").is_file()]
            if dirs:
                table[f"frac_finetuned_{row}"] = table["stage"].map(_stage_usage(dirs))
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    return table[["dataset", "stage", "surgical_val_top1_err", "chosen", *[c for c in table if c.startswith("frac_")]]]


def stage_choice_figure(table: pd.DataFrame) -> Figure:
    """One panel per dataset: each gated row's fine-tuned share per stage (bars), surgical fine-tuning's validation
    error per stage (line, right axis), and the stage validation chose for it (shaded)."""
    datasets = list(dict.fromkeys(table["dataset"]))
    fig = Figure(figsize=(10, 3.2 * len(datasets)), layout="constrained")
    for index, dataset in enumerate(datasets):
        part = table[table["dataset"] == dataset].reset_index(drop=True)
        ax = fig.add_subplot(len(datasets), 1, index + 1)
        shares = [c for c in part if c.startswith("frac_finetuned_")]
        width = 0.8 / max(len(shares), 1)
        for k, column in enumerate(shares):
            ax.bar(part.index + (k - (len(shares) - 1) / 2) * width, part[column], width, label=column[len("frac_finetuned_") :])
        for i in part.index[part["chosen"]]:
            ax.axvspan(i - 0.45, i + 0.45, color="gold", alpha=0.3, zorder=0, label="surgical's choice")
        ax.set_ylim(0, 1)
        ax.set_ylabel("fine-tuned share")
        ax.set_xticks(part.index, part["stage"], rotation=30, ha="right")
        ax.set_title(dataset)
        errors = ax.twinx()
        errors.plot(part.index, part["surgical_val_top1_err"], "k.-", label="surgical val error")
        errors.set_ylabel("surgical val error (%)")
        handles, labels = ax.get_legend_handles_labels()
        more, more_labels = errors.get_legend_handles_labels()
        ax.legend(handles + more, labels + more_labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.12, 1.0))
    return fig
