"""Run records -> tidy tables -> CSV / Markdown / LaTeX (the committed ``results/`` tables).

Tables are produced by code from finished run directories, never edited by hand:
``build_tables("runs", "results")`` regenerates them. Files written by :func:`export_table`:

``error_table.csv`` (tidy, full precision, one row per method and dataset)
    ``method``        the method name (``method.name`` in the run's ``config.yaml``)
    ``dataset``       the dataset name (``data.dataset``)
    ``top1_err``      mean test top-1 error in percent over the seeds
    ``top1_err_std``  sample standard deviation over seeds (ddof=1); empty when there is one seed
    ``seeds``         number of runs (seeds) averaged
``error_table.md``    the wide table (methods x datasets, ``mean ± std``) for READMEs
``error_table.tex``   the same as a booktabs ``tabular``; the lowest error per column in bold

The Markdown and LaTeX rendering lives in :mod:`adafilter_lib.analysis.table_render` (re-exported here).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

import pandas as pd
import yaml

from ..core.errors import KitError
from ..core.files import atomic_write_text
from ..core.runs import CONFIG, PARTIAL_SUFFIX, SUMMARY
from .cells import SETTINGS_COLUMN, label_settings, run_settings
from .table_render import caption, latex_table, markdown_table, wide_table  # noqa: F401  (re-exported)


def standard_error(values: pd.Series) -> float:
    """Standard error of the mean of ``values`` (e.g. paired differences over seeds): sample standard deviation
    over the square root of their number; NaN with fewer than two values, which have no spread to estimate."""
    return values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan


ID_COLUMNS = ["run_dir", "method", "dataset", "backbone", "seed", "n_per_class", SETTINGS_COLUMN]
_HOW_TO_TRAIN = "train some first with `python -m adafilter_lib train ...`"


def load_runs(runs_root: str | Path) -> pd.DataFrame:
    """Collect every finished run under ``runs_root`` (recursively) into one DataFrame.

    A finished run is a directory holding both ``config.yaml`` and ``summary.json``; staging
    directories (``*.partial``) and everything inside them are skipped, as are unfinished runs.

    Args:
        runs_root: folder to search, e.g. ``"runs"``.

    Returns:
        One row per run with columns ``run_dir, method, dataset, backbone, seed, n_per_class, settings``
        (everything the run computes with but the seed, as JSON) followed by the scalar keys of ``summary.json`` (``top1_err``, ``val_top1_err``, ...),
        sorted by method, dataset, seed and run_dir.

    Raises:
        KitError: the folder is missing or holds no finished run.
    """
    root = Path(runs_root)
    if not root.is_dir():
        raise KitError(f"runs folder '{root}' does not exist; {_HOW_TO_TRAIN} or pass the folder that holds them")
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place keeps os.walk out of staging dirs and anything nested in them.
        dirnames[:] = [d for d in dirnames if not d.endswith(PARTIAL_SUFFIX)]
        if CONFIG in filenames and SUMMARY in filenames and not dirpath.endswith(PARTIAL_SUFFIX):
            rows.append(_read_run(Path(dirpath)))
            dirnames[:] = []  # a run's own subfolders (gate records, ...) are not runs
    if not rows:
        raise KitError(f"no finished runs (folders with {CONFIG} and {SUMMARY}) under '{root}'; {_HOW_TO_TRAIN}")
    runs = pd.DataFrame(rows)
    # n_per_class is null for "all images"; a nullable int keeps 500 from printing as 500.0.
    runs["n_per_class"] = runs["n_per_class"].astype("Int64")
    runs = runs.sort_values(["method", "dataset", "seed", "run_dir"], kind="stable")
    return runs.reset_index(drop=True)


def unfinished_runs(runs_root: str | Path) -> list[Path]:
    """The staging folders (``*.partial``: killed or still training) under ``runs_root``, which tables leave out."""
    root = Path(runs_root)
    return sorted(p for p in root.rglob(f"*{PARTIAL_SUFFIX}") if p.is_dir()) if root.is_dir() else []


def _read_run(run_dir: Path) -> dict:
    """One row of :func:`load_runs`: identity columns from the config, then the summary's scalars."""
    try:
        cfg = yaml.safe_load((run_dir / CONFIG).read_text()) or {}
        summary = json.loads((run_dir / SUMMARY).read_text())
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise KitError(f"run '{run_dir}' has an unreadable {CONFIG} or {SUMMARY} ({first}); delete or re-run it") from None
    try:
        row = {
            "run_dir": str(run_dir),
            "method": str(cfg["method"]["name"]),
            "dataset": str(cfg["data"]["dataset"]),
            "backbone": str(cfg["model"]["backbone"]),
            "seed": int(cfg["seed"]),
            "n_per_class": cfg["data"].get("n_per_class"),
            SETTINGS_COLUMN: run_settings(cfg),
        }
    except (KeyError, TypeError, ValueError):
        raise KitError(
            f"run '{run_dir}' has a {CONFIG} without method.name, data.dataset, model.backbone or seed; re-run it"
        ) from None
    for key, value in summary.items():
        # Lists and dicts (e.g. per-layer statistics) do not fit a cell; they stay in the run dir.
        if isinstance(value, (int, float, str, bool)) or value is None:
            row[key if key not in row else f"summary_{key}"] = value
    return row


def error_table(runs: pd.DataFrame, metric: str = "top1_err", method_order: Optional[list[str]] = None) -> pd.DataFrame:
    """Reduce runs to one row per (method, dataset, settings): mean and std of ``metric`` over seeds.

    Runs of one method on one dataset that differ in a setting other than the seed become separate rows,
    named by the keys that differ (``finetune (optim.lr=0.01)``; :func:`~adafilter_lib.analysis.cells.label_settings`).

    Args:
        runs: the output of :func:`load_runs` (optionally filtered, e.g. to one backbone).
        metric: a numeric summary column; its mean keeps the name, its std is ``<metric>_std``.
        method_order: methods to list first, in this order; others follow alphabetically.

    Returns:
        Columns exactly ``method, dataset, <metric>, <metric>_std, seeds``, ordered by method,
        then dataset. The std uses ddof=1 and is NaN for one seed (0.0 would claim a measured spread).

    Raises:
        KitError: ``metric`` is not numeric, or a cell would mix backbones, ``n_per_class`` values
            or repeated seeds (filter ``runs`` first).
    """
    if metric not in runs.columns or not pd.api.types.is_numeric_dtype(runs[metric]):
        numeric = [c for c in runs.columns if c not in ID_COLUMNS and pd.api.types.is_numeric_dtype(runs[c])]
        raise KitError(f"'{metric}' is not a numeric column of the runs; choose one of: {', '.join(numeric)}")
    _check_comparable(runs)
    runs = runs.assign(method=label_settings(runs))  # one cell, one setting: other settings are other rows
    valid = runs.dropna(subset=[metric])
    if valid.empty:
        raise KitError(f"no run has a value for '{metric}'; tabulate another metric or finish some runs")
    table = valid.groupby(["method", "dataset"])[metric].agg(["mean", "std", "count"]).reset_index()
    table.columns = ["method", "dataset", metric, f"{metric}_std", "seeds"]
    table["seeds"] = table["seeds"].astype(int)
    order = list(method_order or [])
    rank = table["method"].map(lambda m: order.index(m) if m in order else len(order))
    table = table.assign(_rank=rank).sort_values(["_rank", "method", "dataset"], kind="stable")
    return table.drop(columns="_rank").reset_index(drop=True)


def _check_comparable(runs: pd.DataFrame) -> None:
    """Refuse tables whose rows would be ambiguous: one method on one dataset mixing backbones or ``n_per_class``
    values (a different task, not a setting), or two runs of the same settings and seed."""
    for (method, dataset), group in runs.groupby(["method", "dataset"]):
        for column in ("backbone", "n_per_class"):
            values = group[column].unique()
            if len(values) > 1:
                shown = ", ".join(sorted(str(v) for v in values))
                raise KitError(
                    f"runs of '{method}' on '{dataset}' mix {column} values ({shown}); "
                    f"keep one, e.g. build_tables(..., where={{'{column}': ...}}) or runs[runs.{column} == ...]"
                )
        same = group.groupby(SETTINGS_COLUMN)["seed"] if SETTINGS_COLUMN in group else [(None, group["seed"])]
        repeated = [seed for _, seeds in same for seed in seeds[seeds.duplicated()].unique()]
        if len(repeated):
            dirs = ", ".join(group.loc[group["seed"] == repeated[0], "run_dir"])
            raise KitError(
                f"'{method}' on '{dataset}' has several runs with seed {repeated[0]} ({dirs}); remove or filter all but one"
            )


def export_table(table: pd.DataFrame, out_dir: str | Path, stem: str = "error_table") -> dict[str, Path]:
    """Write ``<stem>.csv`` (tidy), ``<stem>.md`` and ``<stem>.tex`` (wide), each atomically.

    Args:
        table: the output of :func:`error_table`.
        out_dir: destination folder (created if needed), e.g. ``"results"``.
        stem: file name without suffix.

    Returns:
        ``{"csv": path, "md": path, "tex": path}``.
    """
    out = Path(out_dir)
    paths = {"csv": out / f"{stem}.csv", "md": out / f"{stem}.md", "tex": out / f"{stem}.tex"}
    # Full precision in the CSV (it is the data); rounding happens only in the rendered text.
    atomic_write_text(paths["csv"], table.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(paths["md"], markdown_table(table))
    atomic_write_text(paths["tex"], latex_table(table))
    return paths


def build_tables(
    runs_root: str | Path,
    out_dir: str | Path,
    method_order: Optional[list[str]] = None,
    metric: str = "top1_err",
    where: Optional[dict] = None,
) -> pd.DataFrame:
    """Regenerate the result tables from run records: load -> error_table -> export.

    Args:
        runs_root: folder of run directories (searched recursively).
        out_dir: where the CSV/Markdown/LaTeX files go (e.g. ``"results"``).
        method_order: methods to list first (e.g. ``["finetune", "l2sp", "adafilter"]``).
        metric: the summary column to tabulate; files are ``error_table.*`` for ``top1_err`` and
            ``<metric>_table.*`` otherwise (e.g. ``test_frac_finetuned_table.md``), so they sit side by side.
        where: keep only runs whose columns equal these values, e.g. ``{"backbone": "resnet50"}``.

    Returns:
        The tidy table that was written.
    """
    runs = load_runs(runs_root)
    for column, value in (where or {}).items():
        if column not in runs.columns:
            raise KitError(f"cannot filter on '{column}': not a run column; valid: {', '.join(runs.columns)}")
        runs = runs[runs[column] == value]
    if runs.empty:
        raise KitError(f"no finished runs under '{runs_root}' match {where}; {_HOW_TO_TRAIN}")
    table = error_table(runs, metric=metric, method_order=method_order)
    export_table(table, out_dir, stem=table_stem(metric))
    return table


def table_stem(metric: str) -> str:
    """File name (no suffix) of a metric's table: ``error_table`` for ``top1_err``, else ``<metric>_table``."""
    return "error_table" if metric == "top1_err" else f"{metric}_table"
