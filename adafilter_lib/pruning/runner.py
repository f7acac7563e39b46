"""Fine-Pruning runs: Bayesian-optimized per-stage pruning in rounds, and the prune-after-fine-tune baseline.

``fine_pruning`` (:func:`run_fine_pruning`): dense fine-tuning for ``warmup_epochs`` (the new head has to
learn before accuracy means anything), then ``rounds`` rounds. In each round an Optuna study (Gaussian
process sampler, TPE as an option) proposes one pruning fraction per stage (or per layer; within a stage
one magnitude threshold ranks all its layers; layers under ``min_layer_weights`` are never pruned); a
trial loads the round's starting weights, applies the masks, fine-tunes ``trial_epochs`` and scores
``val_accuracy + lam * compression_term``. The best proposal is then fine-tuned ``round_epochs`` with
its masks and becomes the next round's start; fractions never shrink (the search range starts at the
current fraction). A last ``final_epochs`` of masked fine-tuning picks its best epoch on validation,
and the test split is measured once. Trials explore at extra cost (``search_epochs`` in the summary).

``prune_after_finetune`` (:func:`run_prune_after_finetune`): the same number of training epochs on
the path to the reported model (dense ``warmup_epochs + rounds * round_epochs``, then
``final_epochs`` masked), with one global magnitude prune of the same layers to the overall sparsity of
the matching ``fine_pruning`` run (or ``method.fine_pruning.target_sparsity``) in between.

Both write a normal run directory (staging ``.partial``, ``config.yaml``, ``metrics.jsonl`` per path
epoch, ``summary.json`` with ``top1_err``, ``compression``, ``nonzero_params``), plus ``sparsity.csv``
(per layer), ``best.pt`` (the pruned model, masks baked in: loads into a plain model) and, for
Fine-Pruning, ``study.db`` (SQLite: every trial of every round; a killed run resumes with every
finished trial kept) and ``trials.csv``. :func:`adafilter_lib.training.trainer.fit` does not run them (its loop
has no rounds); the methods registry points to ``python -m adafilter_lib prune``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..core import files, runs
from ..core.config import RunConfig
from ..core.engine import check_selected, evaluate
from ..core.errors import KitError
from ..training.setup import base_summary, eval_loader
from ..training.trainer import improves
from . import masks as pruning
from . import pruned_state
from .session import Session

STUDY_FILE, TRIALS_FILE, SPARSITY_FILE, STATE_FILE = "study.db", "trials.csv", "sparsity.csv", "state.pt"
TrialHook = Callable[[int, int], None]


@contextmanager
def _opened(cfg: RunConfig, resume: bool, force: bool) -> Iterator[tuple[runs.RunFolder, Optional[dict], Optional[dict]]]:
    """The run's folder, the summary of a finished run with these settings (then nothing else to do), and the
    saved state to resume from (None: fresh start). The same checks as ``fit``
    (:class:`~adafilter_lib.core.runs.RunFolder`); the run lock is held for the whole block, so two identical
    commands started together leave one run and one refusal."""
    folder = runs.RunFolder(cfg)
    finished = folder.reuse(force)
    if finished is not None:
        yield folder, finished, None
        return
    published = folder.check_unfinished(resume, force)
    if published is not None:
        yield folder, published, None
        return
    with folder.lock():
        finished = folder.finished_meanwhile(force)
        if finished is not None:
            yield folder, finished, None
            return
        if force:
            folder.discard()
        state = runs.load_checkpoint(folder.staging / STATE_FILE) if (folder.staging / STATE_FILE).exists() else None
        yield folder, None, state


def _start(session: Session, folder: runs.RunFolder, state: Optional[dict]) -> dict:
    """Fresh start: create the staging dir and config; resume: load the saved model and trim metrics."""
    if state is None:
        folder.start(force=False)
        files.atomic_write_text(session.staging / runs.METRICS, "")
        return {"done": -1, "fractions": {}, "search_seconds": 0.0, "train_seconds": 0.0}
    session.model.load_state_dict(state["model"])
    session.path_epoch = state["path_epoch"]
    runs.truncate_metrics(session.staging / runs.METRICS, state["path_epoch"])  # a kill may have left more
    return state


def _save_state(session: Session, state: dict) -> None:
    state = {**state, "model": session.model.state_dict(), "path_epoch": session.path_epoch}
    files.atomic_torch_save(state, session.staging / STATE_FILE)


def _final_phase(session: Session, fractions: Optional[dict], state: dict) -> dict:
    """Masked fine-tuning for ``final_epochs``; keeps the best validation epoch's weights."""
    best = {"val_top1_err": math.inf, "best_epoch": -1, "weights": None}

    def keep_best(epoch: int, val: dict) -> None:
        if improves(val, best, session.cfg.optim.selection):  # the rule fit() uses
            best.update(val_top1_err=val["top1_err"], val_loss=val["loss"], best_epoch=epoch, weights=session.snapshot())

    start = time.perf_counter()
    session.train(session.opts.final_epochs, stream=10_000, fractions=fractions, record="final", on_epoch=keep_best)
    state["train_seconds"] += time.perf_counter() - start
    session.model.load_state_dict(best.pop("weights"))
    return best


def _finish(session: Session, folder: runs.RunFolder, best: dict, state: dict, extra: dict) -> dict:
    """Measure the test split once, write the pruned model, sparsity table and summary, publish."""
    cfg, model = session.cfg, session.model
    test = evaluate(model, eval_loader(session.splits.test, cfg), session.device, cfg.amp, cfg.channels_last)
    try:
        check_selected(
            {**best, "num_val": len(session.splits.val)}, test["loss"], len(session.splits.classes), cfg.optim.chance_loss_factor
        )
    except KitError as err:
        raise folder.abandon(err) from None
    stats = pruned_state.compression_stats(model)
    files.atomic_torch_save(pruned_state.export_pruned(model), session.staging / runs.BEST)
    files.atomic_write_text(session.staging / SPARSITY_FILE, pruned_state.sparsity_table(model).to_csv(index=False))
    opts = session.opts
    epochs = opts.warmup_epochs + opts.rounds * opts.round_epochs + opts.final_epochs
    summary = {
        **base_summary(cfg, session.splits, model, test, best, epochs, state["train_seconds"]),
        **stats,
        "search_seconds": state["search_seconds"],
        **extra,
    }
    folder.finish(summary, resume_only=(STATE_FILE,))
    return summary


def _dense_phase(session: Session, state: dict, epochs: int, record: str) -> None:
    start = time.perf_counter()
    session.train(epochs, stream=0, record=record)
    state["train_seconds"] += time.perf_counter() - start
    state["done"] = 0
    _save_state(session, state)


def run_fine_pruning(
    cfg: RunConfig, resume: bool = False, force: bool = False, progress: bool = True, trial_hook: Optional[TrialHook] = None
) -> dict:
    """Train a ``fine_pruning`` run to a finished run directory and return its summary.

    Args:
        cfg: a config with ``method.name == "fine_pruning"``; options in ``method.fine_pruning``.
        resume: continue ``<run>.partial/`` (finished rounds and trials are kept).
        force: discard a finished or unfinished run of the same name and start over.
        progress: print one line per path epoch and per round.
        trial_hook: called as ``hook(round, trial_number)`` at the start of every trial (tests use it
            to simulate a kill).
    Returns:
        The summary written to ``summary.json``.
    """
    from .search import run_round, trials_frame

    with _opened(cfg, resume, force) as (folder, finished, state):
        if finished is not None:
            return finished
        session = Session(cfg, folder.staging, progress)
        state = _start(session, folder, state)
        opts = session.opts
        try:
            if state["done"] < 0:
                _dense_phase(session, state, opts.warmup_epochs, "warmup")
            fractions = state["fractions"] or {g: 0.0 for g in session.groups}
            for round_index in range(state["done"], opts.rounds):
                start = time.perf_counter()
                fractions = run_round(session, round_index, fractions, trial_hook)
                state["search_seconds"] += time.perf_counter() - start
                start = time.perf_counter()
                session.apply(fractions, dense=opts.splice)
                session.train(opts.round_epochs, stream=1 + round_index, fractions=fractions, record=f"round{round_index + 1}")
                state["train_seconds"] += time.perf_counter() - start
                state.update(done=round_index + 1, fractions=fractions)
                _save_state(session, state)
            best = _final_phase(session, fractions, state)
        except KitError as err:
            raise folder.abandon(err) from None
        trials = trials_frame(folder.staging / STUDY_FILE)
        files.atomic_write_text(folder.staging / TRIALS_FILE, trials.to_csv(index=False))
        extra = {
            "trials": int((trials["state"] == "COMPLETE").sum()),
            "search_epochs": opts.rounds * opts.trials * opts.trial_epochs,
            "fractions": fractions,
        }
        return _finish(session, folder, best, state, extra)


def matching_fine_pruning_dir(cfg: RunConfig) -> Path:
    """The ``fine_pruning`` run with the same dataset, backbone and seed as ``cfg`` (its default name)."""
    other = dataclasses.replace(cfg, run_name=None, method=dataclasses.replace(cfg.method, name="fine_pruning"))
    return other.run_dir()


def run_prune_after_finetune(cfg: RunConfig, resume: bool = False, force: bool = False, progress: bool = True) -> dict:
    """Dense fine-tuning, one global magnitude prune to Fine-Pruning's sparsity, masked fine-tuning.

    Args:
        cfg: a config with ``method.name == "prune_after_finetune"``; epochs from ``method.fine_pruning``.
        resume, force, progress: as :func:`run_fine_pruning`.
    Returns:
        The summary written to ``summary.json``.
    Raises:
        KitError: no ``target_sparsity`` is set and the matching fine_pruning run has not finished.
    """
    opts = cfg.method.fine_pruning
    target = opts.target_sparsity
    if target is None:
        source = matching_fine_pruning_dir(cfg)
        if not runs.is_finished(source):
            raise KitError(
                f"prune_after_finetune prunes to the sparsity of '{source}', which has not finished; run "
                f"`python -m adafilter_lib prune --method fine_pruning` with the same settings first, "
                f"or set method.fine_pruning.target_sparsity"
            )
        target = runs.read_summary(source)["sparsity"]
    with _opened(cfg, resume, force) as (folder, finished, state):
        if finished is not None:
            return finished
        session = Session(cfg, folder.staging, progress)
        state = _start(session, folder, state)
        try:
            if state["done"] < 0:
                _dense_phase(session, state, opts.warmup_epochs + opts.rounds * opts.round_epochs, "dense")
            # The same layers as Fine-Pruning may prune, one global threshold, no splicing.
            eligible = [n for names in session.groups.values() for n in names]
            pruning.set_masks(session.model, pruning.global_magnitude_masks(session.model, target, eligible))
            best = _final_phase(session, None, state)
        except KitError as err:
            raise folder.abandon(err) from None
        return _finish(session, folder, best, state, {"target_sparsity": target})


def run_pruning(cfg: RunConfig, resume: bool = False, force: bool = False, progress: bool = True) -> dict:
    """Dispatch on ``cfg.method.name`` (``fine_pruning`` or ``prune_after_finetune``)."""
    runners = {"fine_pruning": run_fine_pruning, "prune_after_finetune": run_prune_after_finetune}
    if cfg.method.name not in runners:
        raise KitError(
            f"the prune command runs method fine_pruning or prune_after_finetune, got '{cfg.method.name}'; "
            f"train other methods with `python -m adafilter_lib train`"
        )
    return runners[cfg.method.name](cfg, resume=resume, force=force, progress=progress)
