"""Settings a recipe row takes from the cell validation chose for an earlier row.

The row ``adafilter_in_stage`` of a "what to fine-tune" study gates AdaFilter in the one stage that surgical
fine-tuning chose on validation::

    adafilter_in_stage:
      method: adafilter
      take: {row: surgical, settings: {method.surgical.stage: method.adafilter.gated_stage}}

Per dataset, :func:`resolve_take` reads the source row's chosen cell's config and fills ``row.taken``; until that
choice exists (its selection runs unfinished, or every cell failed) the row waits and has no runs.
"""

from __future__ import annotations

import dataclasses
import functools

from ..core.errors import KitError
from .recipe import Row, Study, run_config


def _value(cfg, key: str):
    try:
        return functools.reduce(getattr, key.split("."), cfg)
    except AttributeError:
        raise KitError(f"no setting '{key}' in the run config") from None


def _yaml(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def taken_settings(study: Study, row: Row, dataset: str, source_cell: str) -> tuple[str, ...]:
    """``key=value`` settings for ``row`` from the source row's ``source_cell`` on ``dataset``."""
    source = next(r for r in study.rows if r.name == row.take["row"])
    cfg = run_config(study, source, dataset, source_cell, study.seeds[0])
    return tuple(f"{target}={_yaml(_value(cfg, key))}" for key, target in row.take["settings"].items())


def resolve_take(study: Study, row: Row, dataset: str, chosen: dict[tuple[str, str], str]) -> bool:
    """Fill ``row.taken[dataset]`` from ``chosen`` (``{(row, dataset): cell}``); False while the source has no choice.
    A row without ``take`` is always resolved."""
    if row.take is None:
        return True
    cell = chosen.get((row.take["row"], dataset))
    if cell is None:
        return False
    row.taken[dataset] = taken_settings(study, row, dataset, cell)
    return True


def check_takes(study: Study) -> None:
    """Every take resolves with each of its source's cells into valid configs (before anything trains).

    Raises:
        KitError: one line naming the row, the dataset and the setting.
    """
    for row in study.rows:
        if row.take is None:
            continue
        source = next(r for r in study.rows if r.name == row.take["row"])
        for dataset in study.datasets:
            for source_cell in source.cells:
                try:
                    trial = dataclasses.replace(row, taken={dataset: taken_settings(study, row, dataset, source_cell)})
                    for cell in row.cells:
                        run_config(study, trial, dataset, cell, study.seeds[0])
                except KitError as err:
                    raise KitError(
                        f"row '{row.name}' takes from '{source.name}' (cell '{source_cell}', {dataset}): {err}"
                    ) from None
