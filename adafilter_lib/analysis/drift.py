"""How far training moved each fine-tuned filter, beside how often AdaFilter's gates chose it.

A fine-tuned filter gets gradient only from the images whose gate picks it, so rarely selected filters
should barely move: :func:`filter_drift` measures it per filter from a run's ``best.pt`` and ``gates.npz``,
:func:`drift_by_selection` summarises it per selection band (``python -m adafilter_lib drift``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd

from ..adafilter.gate_record import GATES_FILE, load_gate_record
from ..core.errors import KitError
from ..core.runs import BEST, load_checkpoint
from .records import ID_COLUMNS, RunsLike, as_runs, filter_frequency


def filter_drift(run_dir: Union[str, Path]) -> pd.DataFrame:
    """Each gated filter's test selection frequency beside how far training moved its fine-tuned copy.

    ``drift = ||W_ft[c] - W_pre[c]|| / ||W_pre[c]||`` from ``best.pt``. A fine-tuned filter gets
    gradient only from the images whose gate picks it, so rarely selected filters barely move.

    Returns:
        The :func:`filter_frequency` rows (test split, ``gates.npz``) with a ``drift`` column.
    """
    run_dir = Path(run_dir)
    if not (run_dir / GATES_FILE).is_file() or not (run_dir / BEST).is_file():
        raise KitError(f"'{run_dir}' has no {GATES_FILE} or no {BEST}: give a finished AdaFilter run directory")
    state = load_checkpoint(run_dir / BEST, fix="retrain the run with --force")
    frequency = filter_frequency(load_gate_record(run_dir))
    drift = []
    for name in frequency["layer"].unique():
        finetuned = state[f"features.{name}.layer.weight_finetuned"].flatten(1).double()
        pretrained = state[f"features.{name}.layer.weight_pretrained"].flatten(1).double()
        drift.append(((finetuned - pretrained).norm(dim=1) / pretrained.norm(dim=1).clamp_min(1e-12)).numpy())
    return frequency.assign(drift=np.concatenate(drift))


SELECTION_BANDS = (("rarely (< 5 %)", 0.0, 0.05), ("sometimes", 0.05, 0.95), ("almost always (> 95 %)", 0.95, 1.0))


def drift_by_selection(runs: RunsLike) -> pd.DataFrame:
    """Per AdaFilter run and selection band: the share of filters in it and their median drift.

    Returns:
        Columns ``run_dir, method, dataset, backbone, seed, band, share, median_drift`` (bands:
        :data:`SELECTION_BANDS`, by test selection frequency; the last band includes 1).
    """
    rows = []
    for run in as_runs(runs)[ID_COLUMNS].to_dict("records"):
        if not (Path(run["run_dir"]) / GATES_FILE).is_file():
            continue
        table = filter_drift(run["run_dir"])
        for band, low, high in SELECTION_BANDS:
            inside = table["frequency"].between(low, high, inclusive="both" if high == 1.0 else "left")
            rows.append(
                {
                    **run,
                    "band": band,
                    "share": inside.mean(),
                    "median_drift": table.loc[inside, "drift"].median() if inside.any() else np.nan,
                }
            )
    if not rows:
        raise KitError(f"none of these runs has a {GATES_FILE}; drift exists only for AdaFilter runs")
    return pd.DataFrame(rows)
