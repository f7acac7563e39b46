"""Run records -> tidy DataFrames for figures, notebooks and the gate inspector.

:func:`adafilter_lib.analysis.results.load_runs` gives one row per finished run; the functions here add what a
figure needs from inside each run directory: per-epoch metrics (``metrics.jsonl``), per-layer gate
usage per epoch (its ``val_frac_by_layer``), the test split's per-layer and per-class usage
(``gate_usage.csv``) and per-filter selection frequencies (``gates.npz``). Every frame is tidy (one
row per observation) and carries the run's identity columns, so seaborn can facet or colour by them.

Epochs are numbered from 1, as in every record (``metrics.jsonl``, ``best_epoch`` in ``summary.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Union

import numpy as np
import pandas as pd

from ..adafilter.gate_record import GATES_FILE, GateRecord
from ..adafilter.gates import USAGE_FILE
from ..core.errors import KitError
from ..core.files import read_metrics
from ..core.runs import METRICS, is_finished
from .results import load_runs

ID_COLUMNS = ["run_dir", "method", "dataset", "backbone", "seed"]
RunsLike = Union[str, Path, pd.DataFrame]


def as_runs(runs: RunsLike) -> pd.DataFrame:
    """A :func:`load_runs` frame, given either one or the folder to load it from."""
    return runs if isinstance(runs, pd.DataFrame) else load_runs(runs)


def runs_of(run_dirs: Iterable[Union[str, Path]], runs_root: Union[str, Path]) -> pd.DataFrame:
    """The rows of :func:`load_runs` for exactly these run directories (those that finished).

    Args:
        run_dirs: e.g. ``[cfg.run_dir() for cfg in configs]``; unfinished or missing ones are left out.
        runs_root: the folder that holds them.

    Returns:
        A :func:`load_runs` frame (possibly empty, with the same columns).
    """
    wanted = {Path(d).resolve() for d in run_dirs if is_finished(d)}
    if not wanted:
        return pd.DataFrame(columns=ID_COLUMNS)
    runs = load_runs(runs_root)
    keep = runs["run_dir"].map(lambda d: Path(d).resolve() in wanted)
    return runs[keep].reset_index(drop=True)


def find_run(runs: RunsLike, **where) -> pd.Series:
    """The one run whose columns equal ``where`` (e.g. ``method="adafilter", dataset="digits", seed=0``).

    Raises:
        KitError: no run or several runs match (the message lists what exists).
    """
    frame = as_runs(runs)
    for column in where:
        if column not in frame.columns:
            raise KitError(f"cannot select on '{column}': not a run column; valid: {', '.join(frame.columns)}")
    match = frame[np.logical_and.reduce([frame[c] == v for c, v in where.items()])] if where else frame
    if len(match) != 1:
        wanted = ", ".join(f"{k}={v}" for k, v in where.items())
        names = ", ".join(Path(d).name for d in (match if len(match) else frame)["run_dir"])
        raise KitError(
            f"{'no' if match.empty else len(match)} runs match {wanted}; "
            f"{'candidates' if len(match) else 'runs found'}: {names or 'none'}"
        )
    return match.iloc[0]


def gated_runs(runs_root: Union[str, Path]) -> list[Path]:
    """Finished runs under ``runs_root`` that hold a per-image gate record, sorted by name.

    Raises:
        KitError: the folder is missing or holds no such run.
    """
    runs = load_runs(runs_root)
    found = sorted((Path(d) for d in runs["run_dir"] if (Path(d) / GATES_FILE).is_file()), key=lambda p: p.name)
    if not found:
        raise KitError(
            f"no finished AdaFilter run (with {GATES_FILE}) under '{runs_root}'; train one, e.g. "
            f"`python -m adafilter_lib train --method adafilter --runs {runs_root}`"
        )
    return found


def load_metrics(runs: RunsLike) -> pd.DataFrame:
    """Per-epoch metrics of many runs.

    Args:
        runs: a :func:`load_runs` frame or a runs folder.

    Returns:
        One row per (run, epoch): ``run_dir, method, dataset, backbone, seed, epoch`` (from 1), then
        every scalar field of ``metrics.jsonl`` (``train_loss``, ``train_top1_err``, ``val_loss``,
        ``val_top1_err``, ``val_frac_finetuned``, ...). Per-layer dicts are left out (see
        :func:`usage_over_epochs`).
    """
    rows = []
    for run in as_runs(runs)[ID_COLUMNS].to_dict("records"):
        for record in read_metrics(Path(run["run_dir"]) / METRICS):
            scalars = {k: v for k, v in record.items() if not isinstance(v, (dict, list))}
            rows.append({**run, **scalars, "epoch": int(record["epoch"])})
    return pd.DataFrame(rows, columns=None if rows else ID_COLUMNS + ["epoch"])


def curves(metrics: pd.DataFrame, metric: str = "top1_err") -> pd.DataFrame:
    """Training curves in long form: one row per (run, epoch, split) with the value in column ``metric``.

    Args:
        metrics: the output of :func:`load_metrics`.
        metric: ``"top1_err"`` or ``"loss"`` (the ``train_``/``val_`` prefixes are added here).

    Returns:
        Columns ``run_dir, method, dataset, backbone, seed, epoch, split, <metric>``, split in
        ``{"train", "val"}``.
    """
    columns = [f"{split}_{metric}" for split in ("train", "val")]
    missing = [c for c in columns if c not in metrics.columns]
    if missing:
        raise KitError(
            f"metrics have no column {missing[0]}; choose a metric with train_ and val_ columns, e.g. top1_err or loss"
        )
    long = metrics.melt(id_vars=ID_COLUMNS + ["epoch"], value_vars=columns, var_name="split", value_name=metric)
    long["split"] = long["split"].str.split("_").str[0]
    return long.sort_values(ID_COLUMNS + ["split", "epoch"], kind="stable").reset_index(drop=True)


def usage_over_epochs(runs: RunsLike) -> pd.DataFrame:
    """Per-layer fraction of fine-tuned filters on the validation split after each epoch.

    Returns:
        Columns ``run_dir, method, dataset, backbone, seed, epoch, layer, layer_index, frac_finetuned``;
        runs without gates contribute no rows.
    """
    rows = []
    for run in as_runs(runs)[ID_COLUMNS].to_dict("records"):
        for record in read_metrics(Path(run["run_dir"]) / METRICS):
            for index, (layer, frac) in enumerate((record.get("val_frac_by_layer") or {}).items()):
                rows.append(
                    {
                        **run,
                        "epoch": int(record["epoch"]),
                        "layer": layer,
                        "layer_index": index,
                        "frac_finetuned": float(frac),
                    }
                )
    return pd.DataFrame(rows, columns=ID_COLUMNS + ["epoch", "layer", "layer_index", "frac_finetuned"])


def load_gate_usage(runs: RunsLike) -> pd.DataFrame:
    """The test split's gate usage (``gate_usage.csv``) of every gated run, with identity columns.

    Returns:
        Columns ``run_dir, method, dataset, backbone, seed, layer, layer_index, num_filters, group,
        frac_finetuned, frac_std, images``; ``group`` is ``"all"`` or a class name (always a string).
    """
    frames = []
    for run in as_runs(runs)[ID_COLUMNS].to_dict("records"):
        path = Path(run["run_dir"]) / USAGE_FILE
        if path.is_file():
            usage = pd.read_csv(path, dtype={"group": str}, keep_default_na=False, na_values={"frac_std": [""]})
            frames.append(usage.assign(**run)[ID_COLUMNS + list(usage.columns)])
    if not frames:
        raise KitError(
            f"none of these runs has a {USAGE_FILE}; gate usage exists only for AdaFilter runs "
            f"(method adafilter or its ablations)"
        )
    return pd.concat(frames, ignore_index=True)


def filter_frequency(record: GateRecord) -> pd.DataFrame:
    """How often each filter chose its fine-tuned copy over the record's images.

    Returns:
        One row per filter: ``layer, layer_index, filter, frequency`` (frequency in [0, 1]).
    """
    frames = [
        pd.DataFrame({"layer": name, "layer_index": i, "filter": np.arange(g.shape[1]), "frequency": g.mean(axis=0)})
        for i, (name, g) in enumerate(record.gates.items())
    ]
    return pd.concat(frames, ignore_index=True)


def image_profile(
    layer_names: list[str], image: np.ndarray, class_average: np.ndarray, dataset_average: np.ndarray
) -> pd.DataFrame:
    """Per-layer fine-tuned fraction of one image beside its class average and the dataset average.

    Args:
        layer_names: the L gated layers in execution order.
        image: (L,) this image's fraction per layer (a row of ``GateRecord.layer_fractions()``).
        class_average: (L,) mean over the images of its true class.
        dataset_average: (L,) mean over all images of the record.

    Returns:
        Columns ``layer, layer_index, series, frac_finetuned``; series in
        ``("this image", "class average", "dataset average")``, L rows each.
    """
    series = {"this image": image, "class average": class_average, "dataset average": dataset_average}
    index = np.arange(len(layer_names))
    return pd.concat(
        [
            pd.DataFrame(
                {"layer": layer_names, "layer_index": index, "series": name, "frac_finetuned": np.asarray(values, dtype=float)}
            )
            for name, values in series.items()
        ],
        ignore_index=True,
    )
