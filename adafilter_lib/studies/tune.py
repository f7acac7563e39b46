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

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..core import files, runs
from ..core.config import RunConfig
from ..core.errors import RunFailed
from .recipe import Row, Study, run_config
from .takes import check_takes, resolve_take

if TYPE_CHECKING:
    import pandas as pd


def best_val_loss(run_dir: Path) -> float:
    """The validation loss of a finished run's best epoch (``metrics.jsonl``), the tie-breaker of :func:`choose_cell`."""
    best_epoch = runs.read_summary(run_dir)["best_epoch"]
    for record in files.read_metrics(run_dir / runs.METRICS):
        if record["epoch"] == best_epoch:
            return float(record["val_loss"])
    return float("inf")


def choose_cell(scores: dict[str, Optional[tuple[float, float]]]) -> Optional[str]:
    """The rule: the lowest mean validation error; ties go to the lower mean validation loss of the best
    epochs, then to the cell listed first in the recipe. A failed cell (score None) is never chosen, and a
    loss that is not a number ranks last. ``scores`` is ``{cell: (val error, val loss) or None}``.

    Returns:
        The chosen cell, or None when every cell failed.
    """
    order = [cell for cell, score in scores.items() if score is not None]
    if not order:
        return None

    def rank(cell: str) -> tuple:
        error, loss = scores[cell]
        return (error, loss if math.isfinite(loss) else math.inf, order.index(cell))

    return min(order, key=rank)


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
        fit = _train_or_prune
    check_takes(study)
    if dry_run:  # rows that take settings show the runs they would have now
        chosen_so_far(study)
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
            if not resolve_take(study, row, dataset, chosen):
                print(f"{row.name} on {dataset}: row '{row.take['row']}' has no chosen cell; left out", flush=True)
                continue
            for cell in row.cells:
                for seed in study.select_seeds:
                    done += 1
                    _fit_one(fit, run_config(study, row, dataset, cell, seed), done, total, progress, force)
            cell = choose_cell(_cell_scores(study, row, dataset))
            if cell is None:
                print(f"{row.name} on {dataset}: every cell failed; the row is left out of the comparison", flush=True)
                continue
            chosen[(row.name, dataset)] = cell
            for seed in study.seeds:
                if seed not in study.select_seeds:
                    done += 1
                    _fit_one(fit, run_config(study, row, dataset, cell, seed), done, total, progress, force)
    return chosen


def _cell_scores(study: Study, row: Row, dataset: str) -> Optional[dict[str, Optional[tuple[float, float]]]]:
    """``{cell: (mean val error, mean best-epoch val loss)}`` over the selection seeds, None for a cell with a
    failed run; None in all if a run is neither finished nor failed."""
    scores = {}
    for cell in row.cells:
        dirs = [run_config(study, row, dataset, cell, s).run_dir() for s in study.select_seeds]
        states = [runs.run_state(d) for d in dirs]
        if any(state not in ("finished", "failed") for state in states):
            return None
        if "failed" in states:
            scores[cell] = None
            continue
        errors = [runs.read_summary(d)["val_top1_err"] for d in dirs]
        scores[cell] = (sum(errors) / len(errors), sum(map(best_val_loss, dirs)) / len(dirs))
    return scores


def chosen_so_far(study: Study) -> dict[tuple[str, str], str]:
    """``{(row, dataset): cell}`` for every (row, dataset) whose selection runs have all finished (no training)."""
    chosen = {}
    for dataset in study.datasets:
        for row in study.rows:
            if not resolve_take(study, row, dataset, chosen):
                continue
            scores = _cell_scores(study, row, dataset)
            cell = choose_cell(scores) if scores is not None else None
            if cell is not None:
                chosen[(row.name, dataset)] = cell
    return chosen


def _train_or_prune(cfg: RunConfig, resume: bool = False, progress: bool = True, force: bool = False) -> dict:
    """``fit`` for trained methods, the pruning runner for the pruning methods (``fine_pruning``,
    ``prune_after_finetune``, ``gradual_magnitude``, ``channel_pruning``): a recipe row may hold either."""
    from ..methods.fine_pruning import PRUNING_METHODS

    if cfg.method.name in {m.name for m in PRUNING_METHODS}:
        from ..pruning.runner import run_pruning

        return run_pruning(cfg, resume=resume, force=force, progress=progress)
    from ..training.trainer import fit

    return fit(cfg, resume=resume, progress=progress, force=force)


def _fit_one(fit, cfg: RunConfig, index: int, total: int, progress: bool, force: bool = False) -> Optional[dict]:
    """Train (or reuse) one run; a failed run prints its one line and returns None (the study goes on)."""
    if progress:
        print(f"[{index}/{total}] {cfg.run_dir()} ({runs.run_state(cfg.run_dir())})", flush=True)
    try:
        return fit(cfg, resume=True, progress=progress, **({"force": True} if force else {}))
    except RunFailed as err:
        print(f"failed: {err}", flush=True)
        return None


def selection_runs(study: Study, chosen: dict[tuple[str, str], str]) -> list[dict]:
    """One record per finished or failed run of the study: row, dataset, cell, seed, chosen, ``status``
    (``finished`` or ``failed``, with the reason in ``failure``), run_dir and the summary numbers."""
    records = []
    for dataset in study.datasets:
        for row in study.rows:
            if not resolve_take(study, row, dataset, chosen):
                continue
            for cell in row.cells:
                for seed in study.seeds:
                    run_dir = run_config(study, row, dataset, cell, seed).run_dir()
                    reason = runs.failure(run_dir)
                    if not runs.is_finished(run_dir) and reason is None:
                        continue
                    summary = runs.read_summary(run_dir) if reason is None else {}
                    records.append(
                        {
                            "row": row.name,
                            "method": row.method,
                            "dataset": dataset,
                            "cell": cell,
                            "seed": seed,
                            "chosen": chosen.get((row.name, dataset)) == cell,
                            "status": "finished" if reason is None else "failed",
                            "failure": reason or "",
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

    picked = [r["run_dir"] for r in selection_runs(study, chosen_so_far(study)) if r["chosen"] and r["status"] == "finished"]
    return runs_of(picked, study.runs_root)
