"""Deterministic, stratified carving of label arrays into train / validation / test index sets.

Everything here is a pure function of a label array and a seed: no images are touched, so the
carving is cheap, easy to test, and identical on every machine. Two different seeds are involved:

* a **constant** seed (:data:`TEST_SEED`) for the test hold-out of datasets that ship without an
  official test split (digits, mnist5k, uc_merced, folders without ``train/``/``test/``), so that
  every run of every method is scored on the same test images;
* ``DataConfig.split_seed`` for the labelled train/validation carving. The run seed (weight init,
  batch order) never enters, so changing it cannot move an image between splits.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

from ..core.errors import KitError

# Fixed for good: changing it would silently change the test set of every offline dataset.
TEST_SEED = 12345


class Pool(NamedTuple):
    """A dataset before the train/val carving: the class names and two image collections.

    ``train`` and ``test`` are image collections with a ``labels`` array (shape (N,), int64) and a
    ``subset(indices, transform) -> Dataset`` method (see ``offline.ArrayImages`` and
    ``folder.FileImages``).
    """

    classes: list[str]
    train: object
    test: object


def _class_name(c: int, class_names: Optional[Sequence[str]]) -> str:
    return str(class_names[c]) if class_names is not None and c < len(class_names) else str(c)


def _holdout_count(n: int, fraction: float) -> int:
    # Round half up (not Python's banker's rounding) and keep at least one image on each side, so
    # that every class is present in both parts however small it is.
    return min(n - 1, max(1, int(np.floor(fraction * n + 0.5))))


def stratified_holdout(
    labels: np.ndarray,
    fraction: float,
    seed: int,
    class_names: Optional[Sequence[str]] = None,
    what: str = "test",
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``fraction`` of each class (at least one image, at least one kept).

    Args:
        labels: integer class labels, shape (N,).
        fraction: share of each class to hold out, in (0, 1).
        seed: seed of ``numpy.random.default_rng``; the same seed always gives the same carving.
        class_names: optional names used in error messages.
        what: name of the held-out part, used in error messages ("test", "validation").

    Returns:
        ``(kept, held)``: sorted int64 index arrays into ``labels``, disjoint, covering all of it.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    kept, held = [], []
    # Classes are visited in sorted order with one generator, so the result depends only on the
    # label array and the seed.
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            raise KitError(
                f"class '{_class_name(c, class_names)}' has {len(members)} image(s); at least 2 are "
                f"needed to hold out a {what} image; add images to it or remove the class"
            )
        members = rng.permutation(members)
        n_held = _holdout_count(len(members), fraction)
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def sample_per_class(
    labels: np.ndarray,
    n_per_class: Optional[int],
    seed: int,
    class_names: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """Pick ``n_per_class`` indices of every class (all of them when ``None``).

    Each class is shuffled with the seed and its first ``n`` members are taken, so the picks for a
    smaller ``n`` are a subset of those for a larger ``n`` (same seed): learning curves over
    ``n_per_class`` add images rather than redraw them.

    Args:
        labels: integer class labels, shape (N,).
        n_per_class: images to take per class, or ``None`` for all.
        seed: seed of ``numpy.random.default_rng``.
        class_names: optional names used in error messages.

    Returns:
        Sorted int64 index array into ``labels``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        if n_per_class is not None and len(members) < n_per_class:
            raise KitError(
                f"class '{_class_name(c, class_names)}' has only {len(members)} labelled training "
                f"images but data.n_per_class={n_per_class}; lower data.n_per_class or set it to null"
            )
        picked.append(members if n_per_class is None else members[:n_per_class])
    return np.sort(np.concatenate(picked))


def carve_train_val(
    labels: np.ndarray,
    n_per_class: Optional[int],
    val_fraction: float,
    split_seed: int,
    class_names: Optional[Sequence[str]] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Carve the labelled train and validation indices out of a training pool.

    First ``n_per_class`` images per class are picked, then ``val_fraction`` of them per class (at
    least one) are held out for validation. With ``n_per_class=20, val_fraction=0.2`` every class
    gets 16 train and 4 validation images. Only ``split_seed`` matters; the test split is never
    an input here.

    Args:
        labels: class labels of the training pool, shape (N,).
        n_per_class: labelled images per class (train + val), or ``None`` for all.
        val_fraction: share of the labelled images per class used for validation, in (0, 1).
        split_seed: seed of the carving (``DataConfig.split_seed``).
        class_names: optional names used in error messages.

    Returns:
        ``(train_idx, val_idx)``: sorted, disjoint int64 index arrays into ``labels``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise KitError(f"data.val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    chosen = sample_per_class(labels, n_per_class, split_seed, class_names)
    # The validation draw reuses split_seed: the whole carving stays a function of it alone.
    kept, held = stratified_holdout(labels[chosen], val_fraction, split_seed, class_names, "validation")
    return chosen[kept], chosen[held]
