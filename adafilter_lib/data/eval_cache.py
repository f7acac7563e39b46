"""Decode, resize and normalize an evaluation split once per process, not once per run and epoch.

The evaluation transform is deterministic, so its output for a given split, resolution and normalization
never changes: a study that trains many runs on one in-memory dataset (``make demo``: 21 runs) would
otherwise redo the same resize of the same test images in every run, and of the validation images in
every epoch. :func:`cached_eval_split` transforms the split once and keeps the float tensor (e.g. mnist5k's
1,500 test images at 64 px: 74 MB) in a small process-wide cache; items are bit-identical to the
transformed ones. Only in-memory image sets (:class:`~.offline.ArrayImages`) are cached: file-backed
paper datasets are too large to hold.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .offline import ArrayImages

MAX_ENTRIES = 8  # splits kept; the demo's three tasks need six (validation and test of each)
_CACHE: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()


class TransformedImages(Dataset):
    """Images already transformed: a float tensor (N, 3, R, R) and integer labels (N,).

    Shape:
        item: ``(images[i], labels[i])``, a (3, R, R) float tensor and an int.
    """

    def __init__(self, images: torch.Tensor, labels: np.ndarray):
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


def cached_eval_split(images: ArrayImages, indices: np.ndarray, transform: Callable, key: tuple) -> Dataset:
    """``images.subset(indices, transform)``, transformed once per process and ``key``.

    Args:
        images: the in-memory image pool.
        indices: the split's indices into it.
        transform: the (deterministic) evaluation transform.
        key: what else decides the output: dataset name, resolution, mean, std, natural (the indices and
            the pool's pixels are hashed in here, so a different split never hits a stale entry).
    """
    subset = images.subset(indices, transform)
    digest = hashlib.sha1(np.ascontiguousarray(subset.images).tobytes()).hexdigest()
    full_key = (*key, digest, subset.labels.tobytes())
    if full_key not in _CACHE:
        _CACHE[full_key] = torch.stack([subset[i][0] for i in range(len(subset))]) if len(subset) else torch.empty(0)
        while len(_CACHE) > MAX_ENTRIES:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(full_key)
    return TransformedImages(_CACHE[full_key], subset.labels)
