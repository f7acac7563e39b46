"""What a run trains with, rebuilt the same way by ``fit``, the pruning session and every analysis of a finished
run: the method, data splits and model of a config (``prepare_run``), the model on its device (``place``), the
per-epoch seeded training loader and the in-order evaluation loader, the seeds, and the summary fields every
kind of run writes (``base_summary``).
"""

from __future__ import annotations

import random
import time
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Subset
from torch.utils.data.distributed import DistributedSampler

from ..core import distributed as dist_utils
from ..core.config import RunConfig
from ..core.model import backbone_spec, build_transfer_model
from ..core.provenance import provenance
from ..data import DataSplits, build_datasets
from ..methods import build_method

# The held-out loader shuffles with its own stream, apart from the training loader's.
HOLDOUT_SHUFFLE_OFFSET = 500_009


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A distinct, reproducible seed for each (run seed, epoch, process)."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**31


def prepare_run(cfg: RunConfig):
    """Build the method, data splits and model for ``cfg``; raises KitError before anything is written."""
    method = build_method(cfg)
    spec = backbone_spec(cfg.model.backbone)
    splits = build_datasets(cfg.data, spec.mean, spec.std)
    seed_everything(cfg.seed)  # the new head's initialization depends on the run seed only
    model = build_transfer_model(
        cfg.model.backbone,
        len(splits.classes),
        pretrained=cfg.model.pretrained and method.uses_pretrained,
        weights_path=cfg.model.weights_path,
        head_dropout=cfg.model.head_dropout,
    )
    return method, splits, method.build_model(model)


def place(model: nn.Module, cfg: RunConfig, device: Optional[torch.device] = None) -> tuple[nn.Module, torch.device]:
    """The model on the run's device (default: this process's, from ``cfg.device``) in the run's memory format,
    with deterministic kernels on CPU (a resumed run reaches the same numbers) and cuDNN autotuning on CUDA.
    Every kind of run (``fit``, the pruning runs, a finished run loaded for analysis) places its model here."""
    device = device or dist_utils.local_device(cfg.device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        torch.backends.cudnn.benchmark = True
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory_format), device


def base_summary(
    cfg: RunConfig, splits: DataSplits, model: nn.Module, test: dict, best: dict, epochs: int, train_seconds: float
) -> dict:
    """The ``summary.json`` fields every kind of run writes (a method adds its own).

    Args:
        test: :func:`~adafilter_lib.core.engine.evaluate` on the test split (``top1_err``, ``loss``).
        best: the chosen epoch: ``val_top1_err`` and ``best_epoch`` (0-based; written from 1).
        epochs: training epochs on the path to the reported model.
    """
    return {
        "top1_err": test["top1_err"],
        "test_loss": test["loss"],
        "val_top1_err": best["val_top1_err"],
        "best_epoch": best["best_epoch"] + 1,
        "epochs": epochs,
        "train_seconds": train_seconds,
        "num_train": len(splits.train),
        "num_holdout": len(splits.holdout) if splits.holdout is not None else 0,
        "num_val": len(splits.val),
        "num_test": len(splits.test),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "world_size": dist_utils.world_size(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "provenance": provenance(),  # git commit, versions, command line (a dict: tables read only the scalars)
    }


def train_loader(splits: DataSplits, cfg: RunConfig, epoch: int) -> DataLoader:
    # Re-created each epoch with an epoch-seeded generator so that a resumed run shuffles identically.
    generator = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
    if dist_utils.world_size() > 1:
        sampler = DistributedSampler(splits.train, shuffle=True, seed=cfg.seed, drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(splits.train, generator=generator)
    drop_last = len(splits.train) // dist_utils.world_size() > cfg.data.batch_size  # no size-1 BN batches
    return DataLoader(
        splits.train,
        batch_size=cfg.data.batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=cfg.data.num_workers,
        generator=generator,
        persistent_workers=False,
    )


def holdout_loader(splits: DataSplits, cfg: RunConfig, epoch: int) -> Optional[DataLoader]:
    """The held-out training images (``data.holdout_fraction``), shuffled with their own epoch-seeded generator, or
    None when there are none."""
    if splits.holdout is None:
        return None
    generator = torch.Generator().manual_seed((epoch_seed(cfg.seed, epoch) + HOLDOUT_SHUFFLE_OFFSET) % 2**31)
    drop_last = len(splits.holdout) > cfg.data.batch_size  # no size-1 BN batches
    return DataLoader(
        splits.holdout,
        batch_size=cfg.data.batch_size,
        sampler=RandomSampler(splits.holdout, generator=generator),
        drop_last=drop_last,
        num_workers=cfg.data.num_workers,
        generator=generator,
    )


def eval_loader(dataset, cfg: RunConfig) -> DataLoader:
    """An in-order loader over this process's shard (every ``world_size``-th item, no padding)."""
    if dist_utils.world_size() > 1:
        dataset = Subset(dataset, list(range(dist_utils.rank(), len(dataset), dist_utils.world_size())))
    return DataLoader(dataset, batch_size=cfg.data.eval_batch_size, shuffle=False, num_workers=cfg.data.num_workers)
