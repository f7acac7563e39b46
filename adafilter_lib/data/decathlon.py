"""Visual Decathlon datasets (UCF-101 dynamic images, Omniglot) from the official archives.

Layout expected under ``<root>/decathlon/`` (what ``python -m adafilter_lib prepare`` unpacks):
``annotations/<name>_train.json``, ``annotations/<name>_val.json`` (from decathlon-1.0-devkit.tar.gz)
and ``data/<name>/...`` images (from the ``<name>.tar`` inside decathlon-1.0-data.tar.gz). The
annotations are COCO-style; file names start with ``data/``. The Decathlon test labels are withheld,
so the kit's test split is the official validation split and its own validation split is carved
from the official training split (never from the test images).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import KitError
from .folder import FileImages
from .splits import Pool

SOURCE = (
    "download decathlon-1.0-data.tar.gz and decathlon-1.0-devkit.tar.gz from "
    "https://www.robots.ox.ac.uk/~vgg/decathlon/ into the data root and run "
    "`python -m adafilter_lib prepare {name}`"
)


def _split(base: Path, name: str, split: str, categories: list | None) -> tuple[list, FileImages]:
    path = base / "annotations" / f"{name}_{split}.json"
    try:
        annotations = json.loads(path.read_text())
    except FileNotFoundError:
        raise KitError(f"dataset '{name}' expects '{path}'; " + SOURCE.format(name=name)) from None
    categories = categories or annotations["categories"]
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    file_of = {im["id"]: im["file_name"] for im in annotations["images"]}
    paths, labels = [], []
    for ann in annotations["annotations"]:
        paths.append(base / file_of[ann["image_id"]])
        labels.append(label_of[ann["category_id"]])
    if paths and not paths[0].is_file():
        raise KitError(f"dataset '{name}': image '{paths[0]}' listed in '{path}' is missing; " + SOURCE.format(name=name))
    return categories, FileImages(paths, labels)


def load_decathlon(name: str, root: str | Path) -> Pool:
    """The Decathlon dataset ``name`` (e.g. ``ucf101``): official train as pool, official val as test."""
    base = Path(root) / "decathlon"
    categories, train = _split(base, name, "train", None)
    _, test = _split(base, name, "val", categories)
    return Pool([str(c.get("name", c["id"])) for c in categories], train, test)


def load_ucf101(cfg) -> Pool:
    return load_decathlon("ucf101", cfg.root)


def load_omniglot_decathlon(cfg) -> Pool:
    return load_decathlon("omniglot", cfg.root)
