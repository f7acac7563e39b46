"""One cell, one setting: which runs a table may average, and how runs of one method with other settings are named.

A table cell (a method on a dataset) is a mean over seeds. Runs of the same method that differ in any other
setting (``optim.lr``, a gate option, the epochs, ...) measure different things, and one mean over them is
a number nobody trained. :func:`run_settings` is what a run computes with (its whole resolved config, apart
from the seed and where it lives or runs); :func:`label_settings` keeps the method name where a (method,
dataset) has one setting, and otherwise names each setting by the keys that differ, e.g.
``finetune (optim.lr=0.01)`` and ``finetune (optim.lr=0.02)``: separate rows, never one mean over both.
"""

from __future__ import annotations

import json

import pandas as pd

from ..core.runs import PLACE_KEYS, with_defaults

SETTINGS_COLUMN = "settings"  # the run's settings as canonical JSON (a column of load_runs)
_NOT_SETTINGS = PLACE_KEYS | {"seed", "run_name"}  # the seed varies within a cell; the rest says where a run is


def run_settings(saved: dict) -> str:
    """The settings of a run's saved ``config.yaml`` (missing keys count as today's defaults, as on reuse), as
    canonical JSON of the flat ``{dotted key: value}``, without the seed and the keys that say where it runs."""
    return json.dumps(_flat(with_defaults(saved)), sort_keys=True, default=str)


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if not prefix and key in _NOT_SETTINGS:
            continue
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def label_settings(runs: pd.DataFrame) -> pd.Series:
    """The ``method`` column with each (method, dataset) that mixes settings split by the keys that differ.

    Args:
        runs: :func:`~adafilter_lib.analysis.results.load_runs` rows (with the ``settings`` column).

    Returns:
        A Series aligned with ``runs``: ``finetune`` where all of finetune's runs on that dataset share their
        settings, else ``finetune (optim.lr=0.01)``, ``finetune (optim.lr=0.02)`` (keys in sorted order).
    """
    labels = runs["method"].astype(str).copy()
    if SETTINGS_COLUMN not in runs:
        return labels
    for _, group in runs.groupby(["method", "dataset"], sort=False):
        distinct = {text: json.loads(text) for text in group[SETTINGS_COLUMN].unique()}
        if len(distinct) < 2:
            continue
        keys = sorted(
            {k for s in distinct.values() for k in s if len({json.dumps(d.get(k), default=str) for d in distinct.values()}) > 1}
        )
        for index, text in group[SETTINGS_COLUMN].items():
            shown = ", ".join(f"{k}={distinct[text].get(k)}" for k in keys)
            labels[index] = f"{runs.at[index, 'method']} ({shown})"
    return labels
