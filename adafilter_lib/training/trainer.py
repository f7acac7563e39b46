"""``fit``: one run from a config to a finished run directory, resumable and DDP-ready.

Order matters for the promise "bad input leaves nothing behind": names, data and weights are all
checked before the run's staging directory is created, and a user-caused failure during training
(a NaN loss) removes it again. A killed run keeps ``<run>.partial/`` with its last checkpoint;
``fit(cfg, resume=True)`` continues from there and reaches the same numbers as an uninterrupted run,
because every epoch re-seeds its own randomness from ``(seed, epoch, rank)``.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader

from ..core import distributed as dist_utils
from ..core import files, runs
from ..core.class_metrics import ClassErrors
from ..core.config import RunConfig
from ..core.engine import check_epoch, check_selected, evaluate, recalibrate_bn, train_one_epoch
from ..core.errors import KitError
from ..core.optim import build_optimizer, build_scheduler
from ..core.tb_log import closing_logger, epoch_logger, require_tensorboard
from ..data import DataSplits
from .setup import base_summary, epoch_seed, eval_loader, holdout_loader, place, prepare_run, train_loader

EpochHook = Callable[[int, dict], None]


def fit(
    cfg: RunConfig, resume: bool = False, force: bool = False, progress: bool = True, on_epoch_end: Optional[EpochHook] = None
) -> dict:
    """Train ``cfg`` to a finished run directory and return its summary (see :func:`_fit`).

    The main process holds :func:`adafilter_lib.core.runs.run_lock` from the moment it creates the run's staging
    folder to its end, so two identical commands started together leave one complete run and one
    one-line refusal.
    """
    with ExitStack() as locks:
        return _fit(cfg, resume, force, progress, on_epoch_end, locks)


def _fit(cfg: RunConfig, resume: bool, force: bool, progress: bool, on_epoch_end: Optional[EpochHook], locks: ExitStack) -> dict:
    """Train ``cfg`` to a finished run directory and return its summary.

    Args:
        cfg: the validated run configuration.
        resume: continue ``<run>.partial/`` from its last checkpoint if there is one.
        force: start over, discarding a finished or unfinished run of the same name.
        progress: show tqdm bars (main process only).
        on_epoch_end: called as ``hook(epoch, record)`` after each epoch's checkpoint is written.
    Returns:
        The summary dict written to ``summary.json`` (``top1_err`` is the test error of the best epoch).

    Raises:
        KitError: a finished (or, with ``resume``, an unfinished) run of the same name was trained
            with other settings (``runs_root`` and ``device`` aside); bad names, data or a NaN loss.
    """
    if Path(cfg.runs_root).exists() and not Path(cfg.runs_root).is_dir():
        raise KitError(f"the runs folder '{cfg.runs_root}' is a file; pass a folder with --runs (runs_root=...)")
    device = dist_utils.local_device(cfg.device)
    dist_utils.init_from_env(device)
    folder = runs.RunFolder(cfg)
    staging = folder.staging

    def first_check() -> Optional[dict]:
        # Reuse only what was trained with these settings: a study that changes one option but not
        # the runs folder would otherwise read the old numbers as new ones.
        finished = folder.reuse(
            force, "use another runs folder for the new settings, or --force (fit(..., force=True)) to retrain this one"
        )
        return finished if finished is not None else folder.check_unfinished(resume, force)

    finished = dist_utils.rank_zero_decides(first_check)  # every rank reuses, refuses or trains, as rank 0 decided
    if finished is not None:
        return finished

    method, splits, model = prepare_run(cfg)
    if cfg.log_tensorboard:
        require_tensorboard()  # before anything is written
    model, device = place(model, cfg, device)
    method.prepare(model)
    optimizer = build_optimizer(method.param_groups(model), cfg.optim)
    steps = len(train_loader(splits, cfg, 0))
    scheduler = build_scheduler(optimizer, cfg.optim, steps)

    start_epoch, best = 0, {"val_top1_err": float("inf"), "val_loss": float("inf"), "best_epoch": -1}

    def lock_and_start() -> Optional[dict]:
        locks.enter_context(folder.lock())  # before anything in staging is touched
        finished = folder.finished_meanwhile(force)
        if finished is None:
            folder.start(force)
        return finished

    # Another process may have finished or locked this run since the first check: rank 0 looks again under the
    # lock, and its answer (the finished summary, a refusal, or train) reaches every rank before any barrier.
    finished = dist_utils.rank_zero_decides(lock_and_start)
    if finished is not None:
        return finished
    state = folder.resume_state(device) if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best = state["epoch"], {"val_loss": float("inf"), **state["best"]}
        if dist_utils.is_main():
            runs.truncate_metrics(staging / runs.METRICS, start_epoch)

    train_model = model
    if dist_utils.world_size() > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    val_loader = eval_loader(splits.val, cfg)
    board = locks.enter_context(closing_logger(epoch_logger(cfg.log_tensorboard and dist_utils.is_main(), staging)))
    try:
        for epoch in range(start_epoch, cfg.optim.epochs):
            torch.manual_seed(epoch_seed(cfg.seed, epoch, dist_utils.rank()))
            method.begin_epoch(model, epoch)
            train = train_one_epoch(
                train_model,
                method,
                train_loader(splits, cfg, epoch),
                optimizer,
                scheduler,
                device,
                epoch,
                cfg.amp,
                cfg.channels_last,
                progress,
                holdout=holdout_loader(splits, cfg, epoch),
            )
            if cfg.optim.precise_bn:
                recalibrate_bn(model, method, train_loader(splits, cfg, epoch), device, cfg.amp, cfg.channels_last)
            val_extra = method.eval_collector(len(splits.classes), "val")  # what the method records (AdaFilter: gates)
            val = evaluate(model, val_loader, device, cfg.amp, cfg.channels_last, on_batch=val_extra)
            check_epoch(model, val, epoch)
            record = {
                "epoch": epoch + 1,  # from 1 in every record, as best_epoch in summary.json
                **{f"train_{k}": v for k, v in train.items()},
                **{f"val_{k}": v for k, v in val.items()},
                **_prefixed(val_extra, "val_"),
            }
            improved = improves(val, best, cfg.optim.selection)
            if improved:
                best = {"val_top1_err": val["top1_err"], "val_loss": val["loss"], "best_epoch": epoch}
            if dist_utils.is_main():
                if improved:
                    folder.save_best(model.state_dict())
                files.append_jsonl(staging / runs.METRICS, record)
                if board is not None:
                    board.log(record)
                folder.save_checkpoint(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch + 1,
                        "best": best,
                    }
                )
                if progress:
                    print(
                        f"[{cfg.resolved_run_name()}] epoch {epoch + 1}/{cfg.optim.epochs} "
                        f"train loss {train['loss']:.3f} err {train['top1_err']:.1f}% | val err {val['top1_err']:.1f}%",
                        flush=True,
                    )
            dist_utils.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
        summary = _finish(cfg, method, model, splits, folder, best, device, progress)
    except KitError as err:
        if dist_utils.is_main():  # a failed run is kept for inspection, any other user-caused error leaves nothing
            raise folder.abandon(err) from None
        raise
    # the checkpoint goes: only a resume needs it; best.pt holds the model (a refused publish reaches every rank)
    dist_utils.rank_zero_decides(lambda: folder.finish(summary))
    return summary


def improves(val: dict, best: dict, selection: str = "error") -> bool:
    """Whether an epoch's validation result ``val`` (``top1_err``, ``loss``) beats ``best`` so far.

    ``error``: a strictly lower error; ties keep the earlier epoch. ``error_then_loss``: ties in error
    go to the lower validation loss, which still ranks epochs when a small validation split makes equal
    errors common (20 images: every error is a multiple of 5 %).
    """
    if val["top1_err"] != best["val_top1_err"] or selection == "error":
        return val["top1_err"] < best["val_top1_err"]
    return val["loss"] < best.get("val_loss", float("inf"))


def _prefixed(collector, prefix: str) -> dict:
    """A method's evaluation collector's fields with the split prefix (none without a collector)."""
    return {} if collector is None else {f"{prefix}{key}": value for key, value in collector.fields().items()}


def _finish(
    cfg: RunConfig, method, model, splits: DataSplits, folder: runs.RunFolder, best: dict, device, progress: bool
) -> dict:
    """Reload the best epoch's weights and measure the test split once (never used for selection)."""
    dist_utils.barrier()
    model.load_state_dict(folder.load_best(device))
    staging = folder.staging
    method.finalize(model)
    single = dist_utils.world_size() == 1
    extra, per_class = method.eval_collector(len(splits.classes), "test"), ClassErrors(len(splits.classes))
    collectors = [c for c in (extra, per_class) if c is not None]

    def collect(*batch) -> None:
        for collector in collectors:
            collector(*batch)

    test = evaluate(
        model,
        eval_loader(splits.test, cfg),
        device,
        cfg.amp,
        cfg.channels_last,
        progress=progress,
        desc="test",
        on_batch=collect if single else None,
    )
    if not single and dist_utils.is_main():  # the per-image record needs every test image in order
        full = DataLoader(splits.test, batch_size=cfg.data.eval_batch_size, shuffle=False, num_workers=cfg.data.num_workers)
        evaluate(
            model,
            full,
            device,
            cfg.amp,
            cfg.channels_last,
            on_batch=collect,
            reduce=False,
        )
    check_selected({**best, "num_val": len(splits.val)}, test["loss"], len(splits.classes), cfg.optim.chance_loss_factor)
    if extra is not None and dist_utils.is_main():
        extra.save(staging, splits.classes)
    history = files.read_metrics(staging / runs.METRICS) if dist_utils.is_main() else []
    train_seconds = sum(r["train_seconds"] for r in history)
    return {
        **_prefixed(extra, "test_"),
        **base_summary(cfg, splits, model, test, best, cfg.optim.epochs, train_seconds),
        "test_mean_class_err": per_class.mean_class_err(),
        "train_top1_err": history[-1]["train_top1_err"] if history else None,
    }
