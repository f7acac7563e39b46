"""The training side of a pruning run: a masked model, its data and the engine's loop, phase by phase.

:class:`Session` holds what a pruning run (``fine_pruning``, ``prune_after_finetune``, ``gradual_magnitude``,
``channel_pruning``) works with (the
``finetune`` method's recipe, data splits, the model with masks attached, the device, the staging
directory) and trains it for a number of epochs with the shared engine (``train_one_epoch``,
``recalibrate_bn``, ``evaluate``), writing path epochs to ``metrics.jsonl``. Splicing re-computes the
masks from the dense weights every ``splice_every`` optimizer steps.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Callable, Optional

import torch

from ..core import distributed as dist_utils
from ..core import files, runs
from ..core.config import RunConfig
from ..core.engine import check_epoch, evaluate, recalibrate_bn, train_one_epoch
from ..core.errors import KitError
from ..core.optim import build_optimizer, build_scheduler
from ..training.setup import epoch_seed, eval_loader, place, prepare_run, train_loader
from . import masks as pruning
from . import pruned_state


class Session:
    """What a pruning run works with: config, finetune method, data, model (masked unless ``masks=False``),
    device, staging dir."""

    def __init__(self, cfg: RunConfig, staging: Path, progress: bool, masks: bool = True):
        if dist_utils.world_size() > 1:
            raise KitError(f"{cfg.method.name} runs in one process; start it without torchrun")
        self.cfg, self.staging, self.progress = cfg, staging, progress
        self.opts = cfg.method.fine_pruning
        plain = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, name="finetune"))
        self.method, self.splits, self.model = prepare_run(plain)  # same data, head init and recipe as finetune
        self.model, self.device = place(self.model, cfg)
        self.method.prepare(self.model)
        if masks:  # channel pruning removes channels instead (Torch-Pruning cannot rewrite masked layers)
            pruning.attach_masks(self.model, straight_through=self.opts.splice)
        self.groups = pruning.layer_groups(self.model, self.opts.granularity, self.opts.min_layer_weights)
        if not self.groups:
            raise KitError(
                f"no layer of {cfg.model.backbone} has method.fine_pruning.min_layer_weights="
                f"{self.opts.min_layer_weights} weights or more; lower it"
            )
        self.val_loader = eval_loader(self.splits.val, cfg)
        self.path_epoch = 0  # epochs on the path to the reported model (metrics.jsonl numbering)

    def train(
        self,
        epochs: int,
        stream: int,
        fractions: Optional[dict] = None,
        record: Optional[str] = None,
        on_epoch: Optional[Callable[[int, dict], None]] = None,
        on_step: Optional[Callable[[int, int], None]] = None,
    ) -> float:
        """Fine-tune ``epochs`` with the current masks (re-spliced at {group: fraction} when splicing); val error.

        ``stream`` seeds the data order, so every trial of a round sees the same batches. ``on_step(step, steps)``
        is called after every optimizer step (counted from 1 over the whole call, of ``steps`` in all).
        """
        cfg, val_err = self.cfg, None
        optimizer = build_optimizer(self.method.param_groups(self.model), cfg.optim)
        steps = len(train_loader(self.splits, cfg, 0))
        scheduler = build_scheduler(optimizer, dataclasses.replace(cfg.optim, epochs=max(epochs, 1)), steps)
        hook = self._splicer(fractions) if self.opts.splice and fractions else None
        if on_step is not None:
            hook = self._stepper(on_step, steps * epochs, hook)
        for epoch in range(epochs):
            key = epoch_seed(cfg.seed, stream * 1_000 + epoch)
            torch.manual_seed(key)
            loader = train_loader(self.splits, dataclasses.replace(cfg, seed=key), epoch)
            train = train_one_epoch(
                self.model,
                self.method,
                loader,
                optimizer,
                scheduler,
                self.device,
                epoch,
                cfg.amp,
                cfg.channels_last,
                progress=False,
                on_batch=hook,
            )
            val = self.validate(stream)
            check_epoch(self.model, val, epoch)
            val_err = val["top1_err"]
            if record is not None:
                stats = pruned_state.compression_stats(self.model)
                files.append_jsonl(
                    self.staging / runs.METRICS,
                    {
                        "epoch": self.path_epoch + 1,  # from 1, as in every record
                        "phase": record,
                        **{f"train_{k}": v for k, v in train.items()},
                        **{f"val_{k}": v for k, v in val.items()},
                        "sparsity": stats["sparsity"],
                        "compression": stats["compression"],
                    },
                )
                if self.progress:
                    print(
                        f"[{cfg.resolved_run_name()}] {record} epoch {epoch + 1}/{epochs} train err {train['top1_err']:.1f}% | "
                        f"val err {val_err:.1f}% | compression {stats['compression']:.1f}x",
                        flush=True,
                    )
                self.path_epoch += 1
            if on_epoch is not None:
                on_epoch(epoch, val)
        return self.validate(stream)["top1_err"] if val_err is None else val_err

    def validate(self, stream: int = 0) -> dict:
        if self.cfg.optim.precise_bn:
            recalibrate_bn(
                self.model,
                self.method,
                train_loader(self.splits, self.cfg, stream),
                self.device,
                self.cfg.amp,
                self.cfg.channels_last,
            )
        return evaluate(self.model, self.val_loader, self.device, self.cfg.amp, self.cfg.channels_last)

    def apply(self, fractions: dict[str, float], dense: bool = False) -> None:
        """Prune to {group: fraction} (magnitude masks; ``dense`` ranks the dense weights, for splicing)."""
        pruning.set_masks(self.model, pruning.group_masks(self.model, fractions, self.groups, dense=dense))

    def _splicer(self, fractions: dict) -> Callable:
        count = {"steps": 0}

        def hook(output, labels, loss):  # called after every optimizer step
            count["steps"] += 1
            if count["steps"] % self.opts.splice_every == 0:
                self.apply(fractions, dense=True)

        return hook

    @staticmethod
    def _stepper(on_step: Callable[[int, int], None], steps: int, then: Optional[Callable]) -> Callable:
        count = {"steps": 0}

        def hook(output, labels, loss):
            count["steps"] += 1
            on_step(count["steps"], steps)
            if then is not None:
                then(output, labels, loss)

        return hook

    def snapshot(self) -> dict:
        return copy.deepcopy(self.model.state_dict())
