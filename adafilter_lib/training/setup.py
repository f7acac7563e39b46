"""What a run trains with, rebuilt the same way by ``fit``, the pruning session and every analysis of a finished
run: the method, data splits and model of a config (``prepare_run``), the per-epoch seeded training loader and
the in-order evaluation loader, and the seeds.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, Subset
from torch.utils.data.distributed import DistributedSampler

from ..core import distributed as dist_utils
from ..core.config import RunConfig
from ..core.model import backbone_spec, build_transfer_model
from ..data import DataSplits, build_datasets
from ..methods import build_method


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


def eval_loader(dataset, cfg: RunConfig) -> DataLoader:
    """An in-order loader over this process's shard (every ``world_size``-th item, no padding)."""
    if dist_utils.world_size() > 1:
        dataset = Subset(dataset, list(range(dist_utils.rank(), len(dataset), dist_utils.world_size())))
    return DataLoader(dataset, batch_size=cfg.data.eval_batch_size, shuffle=False, num_workers=cfg.data.num_workers)
