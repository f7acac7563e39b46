"""Counterfactual gates: a trained AdaFilter model evaluated again with its gates overridden.

Does the learned selection help a finished run, or would its fine-tuned filters alone do better?
The same weights are evaluated on the validation and test splits with

- ``learned``: the gates the gate network picks (reproduces the run's own ``val_top1_err`` and
  ``top1_err``, a check that the rebuild is faithful);
- ``ones``: every gate 1, the fine-tuned filters and BN everywhere;
- ``zeros``: every gate 0, the pretrained filters everywhere (with the trained head).

By default the overridden networks keep the BN statistics the run ended with, which were estimated
under the learned gates; ``recalibrate=True`` re-estimates them on the training split under the
override first (as ``optim.precise_bn`` does after every epoch), so that each network is judged with
statistics of its own. Only the validation error may guide a choice between them; the test error is
reported beside it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence, Union

import pandas as pd
from tqdm.auto import tqdm

from ..adafilter.gates import GateStats
from ..adafilter.network import AdaFilterModel
from ..core import runs
from ..core.config import load_config
from ..core.engine import evaluate, recalibrate_bn
from ..core.errors import KitError
from ..methods import build_method
from ..methods.adafilter import AdaFilter
from ..training.finished import load_finished_run
from ..training.setup import eval_loader, train_loader
from .records import ID_COLUMNS, as_runs

GATE_OVERRIDES = ("learned", "ones", "zeros")


@contextlib.contextmanager
def gates_overridden(model: AdaFilterModel, gates: str) -> Iterator[AdaFilterModel]:
    """Within the block, ``model`` computes every gate as ``gates`` says ("learned", "ones" or "zeros").

    The router's ``forced`` mode is set for the block and restored on exit, also when the block raises;
    it takes precedence over the gate warm-up, and ``learned`` leaves the model as it is (a checkpoint
    taken during the warm-up keeps its ones). Nothing in the model's state changes.
    """
    if gates not in GATE_OVERRIDES:
        raise KitError(f"unknown gate override '{gates}'; valid: {', '.join(GATE_OVERRIDES)}")
    router = model.router
    saved = router.forced
    router.forced = None if gates == "learned" else gates
    try:
        yield model
    finally:
        router.forced = saved


def counterfactual_errors(
    run_dir: Union[str, Path], overrides: Sequence[str] = GATE_OVERRIDES, recalibrate: bool = False
) -> pd.DataFrame:
    """Validation and test error of one finished AdaFilter run under each gate override.

    Args:
        run_dir: a finished run with learned gates (``adafilter`` or one of its learned-gate variants).
        overrides: names from :data:`GATE_OVERRIDES`.
        recalibrate: re-estimate the BN statistics on the training split under each override
            (never for ``learned``, which is evaluated exactly as the run left it).
    Returns:
        One row per override: ``gates, val_top1_err, top1_err, val_frac_finetuned`` (the share of
        gates equal to 1 on the validation split, as in the run's own metrics).
    """
    run = load_finished_run(run_dir, hint="give a finished adafilter run directory")
    cfg, method, splits, model, device = run.cfg, run.method, run.splits, run.model, run.device
    if not isinstance(model, AdaFilterModel) or model.router.cfg.gates != "learned":
        raise KitError(f"'{run_dir}' ({cfg.method.name}) has no learned gates to override; give an adafilter run")
    rows = []
    for gates in overrides:
        run.restore()  # each override starts from the run's own weights and statistics
        with gates_overridden(model, gates):
            if recalibrate and gates != "learned":
                recalibrate_bn(model, method, train_loader(splits, cfg, cfg.optim.epochs), device, cfg.amp, cfg.channels_last)
            usage = GateStats(len(splits.classes))
            val = evaluate(model, eval_loader(splits.val, cfg), device, cfg.amp, cfg.channels_last, on_batch=usage)
            test = evaluate(model, eval_loader(splits.test, cfg), device, cfg.amp, cfg.channels_last)
        rows.append(
            {
                "gates": gates,
                "val_top1_err": val["top1_err"],
                "top1_err": test["top1_err"],
                "val_frac_finetuned": usage.compute().overall,
            }
        )
    return pd.DataFrame(rows)


def learned_gate_runs(runs_root: Union[str, Path]) -> list[dict]:
    """The identity columns (``run_dir, method, dataset, backbone, seed``) of every finished AdaFilter run with
    learned gates under ``runs_root``: fine-tuning, the other baselines and the fixed-gate ablations have no
    selection to override or compact."""
    found = []
    for run in as_runs(runs_root)[ID_COLUMNS].to_dict("records"):
        method = build_method(load_config(Path(run["run_dir"]) / runs.CONFIG))
        if isinstance(method, AdaFilter) and method.options.gates == "learned":
            found.append(run)
    return found


def counterfactual_table(
    runs_root: Union[str, Path], overrides: Sequence[str] = GATE_OVERRIDES, recalibrate: bool = False, progress: bool = False
) -> pd.DataFrame:
    """:func:`counterfactual_errors` of every finished learned-gate AdaFilter run under ``runs_root``.

    ``progress`` shows a bar over the runs (each costs a model rebuild and two evaluations per override).

    Returns:
        One row per (run, override) with the run's identity columns (``run_dir, method, dataset,
        backbone, seed``) first.
    Raises:
        KitError: no such run under ``runs_root``.
    """
    frames = []
    for run in tqdm(learned_gate_runs(runs_root), desc="runs", disable=not progress):
        table = counterfactual_errors(run["run_dir"], overrides, recalibrate)
        frames.append(table.assign(**run)[ID_COLUMNS + list(table.columns)])
    if not frames:
        raise KitError(f"no finished adafilter run with learned gates under '{runs_root}'")
    return pd.concat(frames, ignore_index=True)
