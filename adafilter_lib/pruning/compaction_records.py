"""Compaction sweeps as run records: swept once while the weights exist, rebuilt from the record afterwards.

:func:`~adafilter_lib.pruning.compaction.compaction_sweep` needs a run's ``best.pt``, which committed studies do not
keep (weights stay on the machine that trained them). :func:`recorded_compaction_sweep` therefore writes each sweep
into the run's own folder as ``compaction.csv``, a small record committed beside ``summary.json``, and reads it back
when the same thresholds are asked for again. So ``compact --runs <study runs>`` rebuilds a study's compaction
table from a clean clone, and sweeps only where a record is missing.

:func:`compaction_over_runs` sweeps every finished learned-gate AdaFilter run under a folder;
:func:`compaction_summary` pairs each threshold with the same run uncompacted (``top1_err_change``) and averages
over seeds: mean ± standard error per (run group, threshold), where a group is the run's folder relative to the
runs root (a study's ``<row>/<cell>``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import pandas as pd

from ..analysis.counterfactual import learned_gate_runs
from ..analysis.results import standard_error
from ..core import runs
from ..core.errors import KitError
from ..core.files import atomic_write_text
from .compaction import DEFAULT_THRESHOLDS, compaction_sweep

COMPACTION_FILE = "compaction.csv"


def recorded_compaction_sweep(
    run_dir: Union[str, Path], thresholds: Sequence[float] = DEFAULT_THRESHOLDS, progress: bool = True
) -> pd.DataFrame:
    """The run's compaction sweep: read from its ``compaction.csv`` record when that holds every threshold asked for
    (a study may sweep some of its runs more finely), else swept (needs ``best.pt``) and recorded there, together
    with the thresholds the record held.

    Returns:
        The :func:`~adafilter_lib.pruning.compaction.compaction_sweep` table, one row per threshold.
    Raises:
        KitError: the run is not finished; or no record matches and the weights are missing or damaged.
    """
    run_dir = Path(run_dir)
    if not runs.is_finished(run_dir):
        raise KitError(f"'{run_dir}' is not a finished run; train it first, then sweep its compaction thresholds")
    record = run_dir / COMPACTION_FILE
    wanted = np.sort(np.asarray(thresholds, dtype=float))
    held = np.empty(0)
    if record.is_file():
        try:
            table = pd.read_csv(record)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise KitError(f"damaged compaction record '{record}' ({err}); delete it to sweep again") from None
        if "threshold" in table.columns:
            held = table["threshold"].to_numpy(dtype=float)
            if np.isin(wanted, held).all():
                return table[np.isin(held, wanted)].sort_values("threshold").reset_index(drop=True)
    table = compaction_sweep(run_dir, np.union1d(wanted, held).tolist(), progress=progress)
    atomic_write_text(record, table.to_csv(index=False, lineterminator="\n"))
    return table[table["threshold"].isin(wanted)].reset_index(drop=True)


def compaction_over_runs(
    runs_root: Union[str, Path], thresholds: Sequence[float] = DEFAULT_THRESHOLDS, progress: bool = True
) -> pd.DataFrame:
    """:func:`recorded_compaction_sweep` of every finished learned-gate AdaFilter run under ``runs_root``.

    Returns:
        One row per (run, threshold): ``group`` (the run's parent folder relative to ``runs_root``), the run's
        identity columns (``run_dir, method, dataset, backbone, seed``), then the sweep's columns.
    Raises:
        KitError: no such run under ``runs_root``.
    """
    frames = []
    for run in learned_gate_runs(runs_root):
        table = recorded_compaction_sweep(run["run_dir"], thresholds, progress=progress)
        group = Path(run["run_dir"]).parent.relative_to(Path(runs_root)).as_posix()
        frames.append(table.assign(group=group, **run)[["group", *run, *table.columns]])
    if not frames:
        raise KitError(f"no finished adafilter run with learned gates under '{runs_root}'")
    return pd.concat(frames, ignore_index=True)


def compaction_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (group, dataset, threshold) of a :func:`compaction_over_runs` table.

    Returns:
        ``group, dataset, threshold, seeds, extra_params_frac, top1_err, val_top1_err, top1_err_change,
        change_se`` (``top1_err_change`` is paired by construction: each run against itself uncompacted;
        ``change_se`` is its standard error over seeds, NaN for one seed).
    """
    rows = []
    for (group, dataset, threshold), cell in table.groupby(["group", "dataset", "threshold"], sort=True):
        change = cell["top1_err_change"]
        rows.append(
            {
                "group": group,
                "dataset": dataset,
                "threshold": threshold,
                "seeds": len(cell),
                "extra_params_frac": cell["extra_params_frac"].mean(),
                "top1_err": cell["top1_err"].mean(),
                "val_top1_err": cell["val_top1_err"].mean(),
                "top1_err_change": change.mean(),
                "change_se": standard_error(change),
            }
        )
    return pd.DataFrame(rows)
