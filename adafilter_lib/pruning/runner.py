"""Fine-Pruning runs: Bayesian-optimized per-stage pruning in rounds; ``run_pruning`` dispatches every pruning method.

``fine_pruning`` (:func:`run_fine_pruning`): dense fine-tuning for ``warmup_epochs`` (the new head has to
learn before accuracy means anything), then ``rounds`` rounds. In each round an Optuna study (Gaussian
process sampler, TPE as an option) proposes one pruning fraction per stage (or per layer; within a stage
one magnitude threshold ranks all its layers; layers under ``min_layer_weights`` are never pruned); a
trial loads the round's starting weights, applies the masks, fine-tunes ``trial_epochs`` and scores
``val_accuracy + lam * compression_term``. The best proposal is then fine-tuned ``round_epochs`` with
its masks and becomes the next round's start; fractions never shrink (the search range starts at the
current fraction). A last ``final_epochs`` of masked fine-tuning picks its best epoch on validation,
and the test split is measured once. Trials explore at extra cost (``search_epochs`` in the summary).

With ``allocation="global"`` (and a ``target_compression``) no trial runs: each round takes the fractions one
global magnitude threshold gives at the round's budget, so the joint schedule meets pruning-after-fine-tuning's
allocation (the measurement that separates the allocation from the schedule). With ``target_compression`` the
search works at a fixed budget (the allocation among stages is searched;
:func:`~adafilter_lib.pruning.search.budget_fractions`), which is how a front at 2x, 4x, 8x, 16x is drawn.
The baselines ``prune_after_finetune``, ``gradual_magnitude`` and ``channel_pruning`` (structured, through
Torch-Pruning) live in :mod:`.baselines`, the phases they all share in :mod:`.phases`.

Every pruning run writes a normal run directory (staging ``.partial``, ``config.yaml``, ``metrics.jsonl`` per path
epoch, ``summary.json`` with ``top1_err``, ``compression``, ``nonzero_params``), plus ``sparsity.csv``
(per layer), ``best.pt`` (the pruned model, masks baked in: loads into a plain model) and, for
Fine-Pruning, ``study.db`` (SQLite: every trial of every round; a killed run resumes with every
finished trial kept) and ``trials.csv``. :func:`adafilter_lib.training.trainer.fit` does not run them (its loop
has no rounds); the methods registry points to ``python -m adafilter_lib prune``.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from ..core import files
from ..core.config import RunConfig
from ..core.errors import KitError
from .baselines import (
    matching_fine_pruning_dir,
    run_channel_pruning,
    run_gradual_magnitude,
    run_prune_after_finetune,
    target_sparsity,
)
from .phases import dense_phase, final_phase, finish, opened, save_state, start_state
from .session import Session

__all__ = [
    "run_fine_pruning",
    "run_prune_after_finetune",
    "run_gradual_magnitude",
    "run_channel_pruning",
    "run_pruning",
    "matching_fine_pruning_dir",
    "target_sparsity",
]

STUDY_FILE, TRIALS_FILE = "study.db", "trials.csv"
TrialHook = Callable[[int, int], None]


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
    from .search import global_allocation, run_round, trials_frame

    with opened(cfg, resume, force) as (folder, finished, state):
        if finished is not None:
            return finished
        session = Session(cfg, folder.staging, progress)
        state = start_state(session, folder, state)
        opts = session.opts
        try:
            if state["done"] < 0:
                dense_phase(session, folder, state, opts.warmup_epochs, "warmup")
            fractions = state["fractions"] or {g: 0.0 for g in session.groups}
            for round_index in range(state["done"], opts.rounds):
                start = time.perf_counter()
                if opts.allocation == "global":  # no search: the global threshold's allocation at the round's budget
                    fractions = global_allocation(session, round_index)
                else:
                    fractions = run_round(session, round_index, fractions, trial_hook)
                state["search_seconds"] += time.perf_counter() - start
                start = time.perf_counter()
                session.apply(fractions, dense=opts.splice)
                session.train(opts.round_epochs, stream=1 + round_index, fractions=fractions, record=f"round{round_index + 1}")
                state["train_seconds"] += time.perf_counter() - start
                state.update(done=round_index + 1, fractions=fractions)
                save_state(session, folder, state)
            best = final_phase(session, fractions, state)
        except KitError as err:
            raise folder.abandon(err) from None
        searched = opts.allocation == "search"
        if searched:
            trials = trials_frame(folder.staging / STUDY_FILE)
            files.atomic_write_text(folder.staging / TRIALS_FILE, trials.to_csv(index=False))
        extra = {
            "trials": int((trials["state"] == "COMPLETE").sum()) if searched else 0,
            "search_epochs": opts.rounds * opts.trials * opts.trial_epochs if searched else 0,
            "fractions": fractions,
        }
        return finish(session, folder, best, state, extra)


def run_pruning(cfg: RunConfig, resume: bool = False, force: bool = False, progress: bool = True) -> dict:
    """Dispatch on ``cfg.method.name`` (``fine_pruning``, ``prune_after_finetune``, ``gradual_magnitude`` or
    ``channel_pruning``)."""
    runners = {
        "fine_pruning": run_fine_pruning,
        "prune_after_finetune": run_prune_after_finetune,
        "gradual_magnitude": run_gradual_magnitude,
        "channel_pruning": run_channel_pruning,
    }
    if cfg.method.name not in runners:
        raise KitError(
            f"the prune command runs method {', '.join(runners)}, got '{cfg.method.name}'; "
            f"train other methods with `python -m adafilter_lib train`"
        )
    return runners[cfg.method.name](cfg, resume=resume, force=force, progress=progress)
