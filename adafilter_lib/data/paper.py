"""The datasets of the AdaFilter and Fine-Pruning papers, from torchvision or official archives.

Download-backed (torchvision has a class): ``fgvc_aircraft`` (100 variants, trainval/test),
``dtd`` (47 textures, partition 1, train+val/test), ``caltech256_30``/``caltech256_60`` (30 or 60
training images per class drawn with a fixed seed, all remaining images test, clutter class
dropped) and ``omniglot`` (background set, 964 characters; drawers 1-15 train, 16-20 test; this is
not the Visual Decathlon split). The torchvision class is first built without ``download=``; only
when it reports the data missing is it asked to download, and if that fails a one-line
:class:`KitError` says where to get the data and where to put it.

Archive-backed (the user places the official files under ``DataConfig.root``): ``stanford_dogs``,
``mit_indoor67`` (``uc_merced_full`` lives in :mod:`.uc_merced`). Nothing here runs at import time; torchvision classes are
looked up when a loader is called (which also lets tests replace them).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import KitError
from .folder import FileImages, class_dirs, first_line
from .splits import TEST_SEED, Pool, sample_per_class


def _root(cfg) -> Path:
    return Path(getattr(cfg, "root", "data")).expanduser()


def torchvision_dataset(cls_name: str, name: str, root: Path, hint: str, **kwargs: Any) -> Any:
    """Build ``torchvision.datasets.<cls_name>``, downloading only when the data is missing.

    Args:
        cls_name: class name in ``torchvision.datasets``.
        name: the kit's dataset name (for messages).
        root: ``DataConfig.root``.
        hint: where to get the data and where to put it (ends the error message).
        **kwargs: passed to the class (split, partition, ...).

    Returns:
        The torchvision dataset instance.
    """
    import torchvision.datasets

    cls = getattr(torchvision.datasets, cls_name)
    try:
        return cls(str(root), **kwargs)
    except RuntimeError:
        pass  # torchvision's "Dataset not found": fall through to a download attempt
    try:
        return cls(str(root), download=True, **kwargs)
    except Exception as err:  # no network, HTTP errors, checksum mismatches, full disks...
        raise KitError(f"dataset '{name}' is not under '{root}' and downloading it failed ({first_line(err)}); {hint}") from None


def _private(ds: Any, attr: str) -> Any:
    # torchvision keeps file lists in private attributes; fail clearly if a release renames them.
    if not hasattr(ds, attr):
        raise KitError(f"{type(ds).__name__} of this torchvision version lacks '{attr}'; use torchvision 0.19-0.29")
    return getattr(ds, attr)


def _files(ds: Any, classes: list[str]) -> FileImages:
    """File list of a torchvision dataset with ``_image_files``/``_labels``, relabelled onto ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    labels = [index[ds.classes[label]] for label in _private(ds, "_labels")]
    return FileImages(_private(ds, "_image_files"), labels)


def load_fgvc_aircraft(cfg) -> Pool:
    """FGVC-Aircraft, 100 variants: the official trainval pool and test split."""
    root = _root(cfg)
    hint = (
        f"download fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ "
        f"and extract it so that '{root / 'fgvc-aircraft-2013b' / 'data'}' exists"
    )
    trainval, test = (
        torchvision_dataset("FGVCAircraft", "fgvc_aircraft", root, hint, split=split, annotation_level="variant")
        for split in ("trainval", "test")
    )
    classes = list(trainval.classes)
    return Pool(classes, _files(trainval, classes), _files(test, classes))


def load_dtd(cfg) -> Pool:
    """Describable Textures, partition 1: train + val images form the pool, test is the test split."""
    root = _root(cfg)
    hint = (
        f"download dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/dtd/ and extract it "
        f"so that '{root / 'dtd' / 'dtd' / 'images'}' and '{root / 'dtd' / 'dtd' / 'labels'}' exist"
    )
    train, val, test = (
        torchvision_dataset("DTD", "dtd", root, hint, split=split, partition=1) for split in ("train", "val", "test")
    )
    classes = sorted(set(train.classes) | set(val.classes))
    train_files, val_files = _files(train, classes), _files(val, classes)
    pool = FileImages(train_files.paths + val_files.paths, np.concatenate([train_files.labels, val_files.labels]))
    return Pool(classes, pool, _files(test, classes))


def _load_caltech256(cfg, n_train: int) -> Pool:
    root = _root(cfg)
    name = f"caltech256_{n_train}"
    hint = (
        f"download 256_ObjectCategories.tar from https://data.caltech.edu/records/nyy15-4j048 and extract "
        f"it so that '{root / 'caltech256' / '256_ObjectCategories'}' exists"
    )
    ds = torchvision_dataset("Caltech256", name, root, hint)
    base = Path(ds.root) / "256_ObjectCategories"
    # "257.clutter" is background, not an object class: the protocol uses the 256 others.
    folders = [c for c in ds.categories if (base / c).is_dir() and not c.startswith("257.")]
    paths, labels = [], []
    for label, folder in enumerate(folders):
        found = sorted((base / folder).glob("*.jpg"))  # the files torchvision counts
        paths += found
        labels += [label] * len(found)
    labels = np.asarray(labels, dtype=np.int64)
    classes = [c.split(".", 1)[1] if "." in c else c for c in folders]  # "001.ak47" -> "ak47"
    # The training images are drawn with the constant seed, so a method comparison never
    # depends on split_seed here; the 30-image draw is a subset of the 60-image one.
    train = sample_per_class(labels, n_train, TEST_SEED, classes)
    test = np.setdiff1d(np.arange(len(labels)), train)
    pool = FileImages(paths, labels)
    return Pool(classes, pool.subset(train), pool.subset(test))


def load_caltech256_30(cfg) -> Pool:
    """Caltech-256 with 30 training images per class (the rest test)."""
    return _load_caltech256(cfg, 30)


def load_caltech256_60(cfg) -> Pool:
    """Caltech-256 with 60 training images per class (the rest test)."""
    return _load_caltech256(cfg, 60)


def load_omniglot(cfg) -> Pool:
    """Omniglot background set: 964 characters x 20 drawers; drawers 1-15 train, 16-20 test."""
    root = _root(cfg)
    hint = (
        f"download images_background.zip from https://github.com/brendenlake/omniglot/tree/master/python "
        f"and put it, and its extracted images_background/ folder, in '{root / 'omniglot-py'}'"
    )
    ds = torchvision_dataset("Omniglot", "omniglot", root, hint, background=True)
    target = Path(ds.target_folder)
    classes, split_paths, split_labels = [], ([], []), ([], [])
    for alphabet in class_dirs(target):
        for character in class_dirs(alphabet):
            label = len(classes)
            classes.append(f"{alphabet.name}/{character.name}")
            for path in sorted(character.glob("*.png")):
                # File names are "<image id>_<drawer>.png" with drawers 01..20.
                drawer = path.stem.rsplit("_", 1)[-1]
                if not drawer.isdigit():
                    raise KitError(
                        f"omniglot file '{path}' is not named <id>_<drawer>.png; extract the official images_background.zip again"
                    )
                part = 0 if int(drawer) <= 15 else 1
                split_paths[part].append(path)
                split_labels[part].append(label)
    return Pool(classes, FileImages(split_paths[0], split_labels[0]), FileImages(split_paths[1], split_labels[1]))


def _missing(name: str, base: Path, needs: str, how: str) -> KitError:
    return KitError(f"dataset '{name}' expects {needs} under '{base}'; {how}")


def _read_list(path: Path) -> list[str]:
    """Image paths relative to the Images/ folder, from a .txt (one per line) or .mat split file."""
    if path.suffix == ".txt":
        return [line.strip().replace("\\", "/") for line in path.read_text().splitlines() if line.strip()]
    try:
        from scipy.io import loadmat
    except ImportError:
        raise KitError(
            f"reading '{path}' needs scipy (pip install scipy); or write "
            f"{path.with_suffix('.txt').name} with one image path per line instead"
        ) from None
    # file_list is an (N, 1) cell array of 1-element string arrays, e.g. "n02085620-Chihuahua/x.jpg".
    return [str(np.asarray(entry).ravel()[0]) for entry in loadmat(str(path))["file_list"].ravel()]


def _listed(images: Path, names: list[str], list_file: Path) -> FileImages:
    """Resolve list entries ``<class folder>/<file>`` against ``images``; missing files are an error."""
    index = {d.name: i for i, d in enumerate(class_dirs(images))}
    paths, labels, missing = [], [], []
    for rel in names:
        folder = rel.split("/", 1)[0]
        if folder in index and (images / rel).is_file():
            paths.append(images / rel)
            labels.append(index[folder])
        else:
            missing.append(rel)
    if missing:
        raise KitError(
            f"{len(missing)} image(s) listed in '{list_file}' are missing from '{images}' "
            f"(first: '{missing[0]}'); extract the official image archive there again"
        )
    return FileImages(paths, labels)


def _load_listed(name: str, base: Path, train_list: str, test_list: str, needs: str, source: str) -> Pool:
    images = base / "Images"
    lists = [base / train_list, base / test_list]
    if not all(p.is_file() for p in lists):  # the plain-text alternative of .mat split files
        lists = [p.with_suffix(".txt") for p in lists]
    if not images.is_dir() or not all(p.is_file() for p in lists):
        raise _missing(name, base, needs, source)
    # Class names without the WordNet id prefix of Stanford Dogs ("n02085620-Chihuahua" -> "Chihuahua").
    classes = [re.sub(r"^n\d{8}-", "", d.name) for d in class_dirs(images)]
    return Pool(classes, *(_listed(images, _read_list(p), p) for p in lists))


def load_stanford_dogs(cfg) -> Pool:
    """Stanford Dogs (120 breeds) from ``<root>/stanford_dogs/{Images/, train_list.mat, test_list.mat}``."""
    return _load_listed(
        "stanford_dogs",
        _root(cfg) / "stanford_dogs",
        "train_list.mat",
        "test_list.mat",
        "Images/ and train_list.mat, test_list.mat (or train_list.txt, test_list.txt)",
        "download images.tar and lists.tar from http://vision.stanford.edu/aditya86/ImageNetDogs/ and extract both there",
    )


def load_mit_indoor67(cfg) -> Pool:
    """MIT Indoor-67 from ``<root>/mit_indoor67/{Images/, TrainImages.txt, TestImages.txt}``."""
    return _load_listed(
        "mit_indoor67",
        _root(cfg) / "mit_indoor67",
        "TrainImages.txt",
        "TestImages.txt",
        "Images/, TrainImages.txt and TestImages.txt",
        "download indoorCVPR_09.tar, TrainImages.txt and TestImages.txt from "
        "https://web.mit.edu/torralba/www/indoor.html and put them (the archive extracted) there",
    )
