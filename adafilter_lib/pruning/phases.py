"""The phases every pruning run is made of, shared by Fine-Pruning and the two pruning baselines: opening the run
folder (reuse, resume, lock), the checkpoint after each phase, dense fine-tuning, the last masked fine-tuning
with its best validation epoch, and the finish (test split once, pruned ``best.pt``, ``sparsity.csv``, summary,
publish). The life cycle itself is :class:`~adafilter_lib.core.runs.RunFolder`'s, as for ``fit``.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Iterator, Optional

from ..core import files, runs
from ..core.config import RunConfig
from ..core.engine import check_selected, evaluate
from ..core.errors import KitError
from ..training.setup import base_summary, eval_loader
from ..training.trainer import improves
from . import pruned_state
from .session import Session
from .sparse_file import SPARSE_BEST, save_sparse

SPARSITY_FILE = "sparsity.csv"


@contextmanager
def opened(cfg: RunConfig, resume: bool, force: bool) -> Iterator[tuple[runs.RunFolder, Optional[dict], Optional[dict]]]:
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
        state = folder.resume_state()
        yield folder, None, state


def start_state(session: Session, folder: runs.RunFolder, state: Optional[dict]) -> dict:
    """Fresh start: create the staging dir and config; resume: load the saved model and trim metrics.

    A staging folder without a checkpoint (killed before its first phase ended, or left by a version that named the
    checkpoint ``state.pt``) holds nothing to resume from: it is emptied, so no stale trial or file survives.
    """
    if state is None:
        folder.start(force=True)
        files.atomic_write_text(session.staging / runs.METRICS, "")
        return {"done": -1, "fractions": {}, "search_seconds": 0.0, "train_seconds": 0.0}
    session.model.load_state_dict(state["model"])
    session.path_epoch = state["path_epoch"]
    runs.truncate_metrics(session.staging / runs.METRICS, state["path_epoch"])  # a kill may have left more
    return state


def save_state(session: Session, folder: runs.RunFolder, state: dict) -> None:
    """The checkpoint after a phase or round: progress, model (with its masks) and the path epoch."""
    folder.save_checkpoint({**state, "model": session.model.state_dict(), "path_epoch": session.path_epoch})


def final_phase(session: Session, fractions: Optional[dict], state: dict) -> dict:
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


def finish(session: Session, folder: runs.RunFolder, best: dict, state: dict, extra: dict) -> dict:
    """Measure the test split once, write the pruned model (``best.pt``, and sparse: ``best_sparse.pt``), the
    sparsity table and the summary (with both files' sizes in bytes), publish."""
    cfg, model = session.cfg, session.model
    test = evaluate(model, eval_loader(session.splits.test, cfg), session.device, cfg.amp, cfg.channels_last)
    try:
        check_selected(
            {**best, "num_val": len(session.splits.val)}, test["loss"], len(session.splits.classes), cfg.optim.chance_loss_factor
        )
    except KitError as err:
        raise folder.abandon(err) from None
    stats = pruned_state.compression_stats(model)
    exported = pruned_state.export_pruned(model)
    folder.save_best(exported)
    sizes = {
        "best_bytes": (session.staging / runs.BEST).stat().st_size,
        "sparse_bytes": save_sparse(exported, session.staging / SPARSE_BEST),
    }
    files.atomic_write_text(session.staging / SPARSITY_FILE, pruned_state.sparsity_table(model).to_csv(index=False))
    opts = session.opts
    epochs = opts.warmup_epochs + opts.rounds * opts.round_epochs + opts.final_epochs
    summary = {
        **base_summary(cfg, session.splits, model, test, best, epochs, state["train_seconds"]),
        **stats,
        "search_seconds": state["search_seconds"],
        **sizes,
        "target_compression": opts.target_compression,
        **extra,
    }
    folder.finish(summary)
    return summary


def dense_phase(session: Session, folder: runs.RunFolder, state: dict, epochs: int, record: str) -> None:
    start = time.perf_counter()
    session.train(epochs, stream=0, record=record)
    state["train_seconds"] += time.perf_counter() - start
    state["done"] = 0
    save_state(session, folder, state)


def eligible_layers(session: Session) -> list[str]:
    """The layers Fine-Pruning may prune (``min_layer_weights`` and up): the other methods prune the same ones."""
    return [n for names in session.groups.values() for n in names]
