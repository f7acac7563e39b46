"""Selection studies: every method gets the same tuning budget, and its setting is chosen on validation only.

A study is a YAML recipe (``adafilter_lib/configs/studies/*.yaml``, or any file; :func:`load_study`) with rows (a method with its
own settings) and, per row, cells: the cartesian product of a learning-rate ``grid`` and optional named
``variants`` (alternative recipes). For each (row, dataset) the cell with the lowest validation error
is kept (:func:`choose_cell`; the rule is written below), and the row's seeds are trained at that cell.
``select: first`` chooses on the first seed and trains the other seeds at the chosen cell only (what a
CPU can afford; the tables say so); ``select: all`` trains every cell on every seed and chooses on the
mean over seeds. The test split never takes part. Runs go to ``<runs>/<row>/<cell>/<run>``, so a killed
study continues where it stopped (``fit(resume=True)``), and :mod:`adafilter_lib.studies.tune_tables` writes the
tables from the run records.

Recipe keys: ``base`` (a packaged config name such as ``demo``, or a YAML path), ``set`` (overrides for
every run), ``datasets`` ({name: labelled images per class, or null for all}), ``seeds``, ``select``,
``reference`` (the row paired differences are taken against), ``runs``, ``out``, ``rows``
(:mod:`adafilter_lib.studies.recipe` reads and checks recipes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..core import files, runs
from ..core.config import RunConfig
from .recipe import Row, Study, run_config

if TYPE_CHECKING:
    import pandas as pd


def best_val_loss(run_dir: Path) -> float:
    """The validation loss of a finished run's best epoch (``metrics.jsonl``), the tie-breaker of :func:`choose_cell`."""
    best_epoch = runs.read_summary(run_dir)["best_epoch"] - 1
    for record in files.read_jsonl(run_dir / runs.METRICS):
        if record["epoch"] == best_epoch:
            return float(record["val_loss"])
    return float("inf")


def choose_cell(scores: dict[str, tuple[float, float]]) -> str:
    """The rule: the lowest mean validation error; ties go to the lower mean validation loss of the best
    epochs, then to the cell listed first in the recipe. ``scores`` is ``{cell: (val error, val loss)}``."""
    order = list(scores)
    return min(order, key=lambda cell: (scores[cell][0], scores[cell][1], order.index(cell)))


def plan(study: Study) -> list[tuple[Row, str, str, list[RunConfig]]]:
    """Every selection run, as ``(row, dataset, cell, configs of the selection seeds)``."""
    return [
        (row, dataset, cell, [run_config(study, row, dataset, cell, s) for s in study.select_seeds])
        for dataset in study.datasets
        for row in study.rows
        for cell in row.cells
    ]


def run_study(
    study: Study, progress: bool = True, dry_run: bool = False, fit=None, force: bool = False
) -> dict[tuple[str, str], str]:
    """Train (or reuse) the selection runs, choose each row's cell per dataset, train its other seeds.

    Returns:
        ``{(row, dataset): chosen cell}`` (with ``dry_run``: only prints the plan and returns ``{}``).
    """
    if fit is None:
        from ..training.trainer import fit
    jobs = plan(study)
    total = sum(len(c) for *_, c in jobs) + len(study.datasets) * len(study.rows) * (len(study.seeds) - len(study.select_seeds))
    if dry_run:
        for row, dataset, cell, configs in jobs:
            state = ", ".join(runs.run_state(c.run_dir()) for c in configs)
            print(f"{row.name:<22} {dataset:<12} {cell:<28} {state}")
        print(
            f"{total} runs in all ({len(jobs)} selection cells x {len(study.select_seeds)} seed(s), then the other seeds "
            f"of each row's chosen cell); runs under {study.runs_root}"
        )
        return {}
    done = 0
    chosen: dict[tuple[str, str], str] = {}
    for dataset in study.datasets:
        for row in study.rows:
            for cell in row.cells:
                for seed in study.select_seeds:
                    done += 1
                    _fit_one(fit, run_config(study, row, dataset, cell, seed), done, total, progress, force)
            cell = chosen[(row.name, dataset)] = choose_cell(_cell_scores(study, row, dataset))
            for seed in study.seeds:
                if seed not in study.select_seeds:
                    done += 1
                    _fit_one(fit, run_config(study, row, dataset, cell, seed), done, total, progress, force)
    return chosen


def _cell_scores(study: Study, row: Row, dataset: str) -> Optional[dict[str, tuple[float, float]]]:
    """``{cell: (mean val error, mean best-epoch val loss)}`` over the selection seeds; None if one is unfinished."""
    scores = {}
    for cell in row.cells:
        dirs = [run_config(study, row, dataset, cell, s).run_dir() for s in study.select_seeds]
        if not all(runs.is_finished(d) for d in dirs):
            return None
        errors = [runs.read_summary(d)["val_top1_err"] for d in dirs]
        scores[cell] = (sum(errors) / len(errors), sum(map(best_val_loss, dirs)) / len(dirs))
    return scores


def chosen_so_far(study: Study) -> dict[tuple[str, str], str]:
    """``{(row, dataset): cell}`` for every (row, dataset) whose selection runs have all finished (no training)."""
    chosen = {}
    for dataset in study.datasets:
        for row in study.rows:
            scores = _cell_scores(study, row, dataset)
            if scores is not None:
                chosen[(row.name, dataset)] = choose_cell(scores)
    return chosen


def _fit_one(fit, cfg: RunConfig, index: int, total: int, progress: bool, force: bool = False) -> dict:
    if progress:
        print(f"[{index}/{total}] {cfg.run_dir()} ({runs.run_state(cfg.run_dir())})", flush=True)
    return fit(cfg, resume=True, progress=progress, **({"force": True} if force else {}))


def selection_runs(study: Study, chosen: dict[tuple[str, str], str]) -> list[dict]:
    """One record per finished run of the study: row, dataset, cell, seed, chosen, run_dir and the summary numbers."""
    records = []
    for dataset in study.datasets:
        for row in study.rows:
            for cell in row.cells:
                for seed in study.seeds:
                    run_dir = run_config(study, row, dataset, cell, seed).run_dir()
                    if not runs.is_finished(run_dir):
                        continue
                    summary = json.loads((run_dir / runs.SUMMARY).read_text())
                    records.append(
                        {
                            "row": row.name,
                            "method": row.method,
                            "dataset": dataset,
                            "cell": cell,
                            "seed": seed,
                            "chosen": chosen.get((row.name, dataset)) == cell,
                            "run_dir": str(run_dir),
                            **{k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                        }
                    )
    return records


def chosen_runs(study: Study) -> "pd.DataFrame":
    """The :func:`~adafilter_lib.analysis.results.load_runs` rows of each (row, dataset)'s chosen cell, finished runs only.

    What analyses of a study read: one run per (method, dataset, seed) even where a row tried several
    recipes (the demo's AdaFilter), so tables and ``find_run`` work as on a flat runs folder.
    """
    from ..analysis.records import runs_of

    picked = [r["run_dir"] for r in selection_runs(study, chosen_so_far(study)) if r["chosen"]]
    return runs_of(picked, study.runs_root)
