"""``python -m adafilter_lib prepare DATASET --root data/``: get a paper dataset ready on disk.

Download-backed sets go through torchvision (which verifies its own checksums). Archive-backed sets
need the official archives placed in the data root by the user: each is checked against its
documented SHA-256 (where one is published), unpacked with tar/zip's safe "data" filter, and the
dataset is loaded once to write its split lists (``<root>/splits/<dataset>.csv``: path, label,
split). Nothing is written before every archive is present and verified.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from ..core.config import DataConfig
from ..core.errors import KitError
from ..core.files import atomic_write_text
from .registry import get_spec


@dataclass(frozen=True)
class Archive:
    file: str  # name the user saves it under, in the data root
    url: str  # where to get it
    sha256: Optional[str]  # published checksum (None: none is published; size is checked instead)
    size: Optional[int] = None


@dataclass(frozen=True)
class ArchiveSet:
    archives: tuple[Archive, ...]
    unpack: Callable[[Path, tuple[Path, ...]], None]  # (root, archive paths) -> files in place


def _extract(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    elif archive.suffix in (".tar", ".gz", ".tgz"):
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")  # refuses absolute paths and links out of dest
    else:  # a plain file (split list)
        shutil.copy2(archive, dest / archive.name)


def _unpack_into(folder: str) -> Callable[[Path, tuple[Path, ...]], None]:
    return lambda root, paths: [_extract(p, root / folder) for p in paths]


def _unpack_decathlon(name: str) -> Callable[[Path, tuple[Path, ...]], None]:
    def unpack(root: Path, paths: tuple[Path, ...]) -> None:
        data_tar, devkit = paths
        base, scratch = root / "decathlon", root / "decathlon" / ".unpack"
        _extract(devkit, scratch)
        shutil.copytree(scratch / "decathlon-1.0" / "annotations", base / "annotations", dirs_exist_ok=True)
        _extract(data_tar, scratch)  # holds one <name>.tar per Decathlon dataset
        inner = next(scratch.rglob(f"{name}.tar"), None)
        if inner is None:
            raise KitError(f"'{data_tar}' holds no {name}.tar; download decathlon-1.0-data.tar.gz again")
        _extract(inner, base / "data")
        shutil.rmtree(scratch)

    return unpack


_DECATHLON = (
    Archive(
        "decathlon-1.0-data.tar.gz",
        "https://www.robots.ox.ac.uk/~vgg/share/decathlon-1.0-data.tar.gz",
        "8eca928bda025d855c91a78db45b3b18bc322efd7b1462a041e62c27b3c83c25",
        406351554,
    ),
    Archive(
        "decathlon-1.0-devkit.tar.gz",
        "https://www.robots.ox.ac.uk/~vgg/share/decathlon-1.0-devkit.tar.gz",
        "f86d9e128678434ff2a3a374f00eb3e2ec2267e15e53ddae5f19ff19378b5ff7",
        23503205,
    ),
)

# Checksums as published with TensorFlow Datasets' url_checksums (Stanford Dogs, UC Merced, Decathlon).
ARCHIVE_SETS: dict[str, ArchiveSet] = {
    "stanford_dogs": ArchiveSet(
        (
            Archive(
                "images.tar",
                "http://vision.stanford.edu/aditya86/ImageNetDogs/images.tar",
                "a443fc2f9a851aa1a7b8e4fa4af94b8459fce2c9f5a2f4dd4669cf9673a4ec58",
                793579520,
            ),
            Archive(
                "lists.tar",
                "http://vision.stanford.edu/aditya86/ImageNetDogs/lists.tar",
                "34b47cacd9a98b5d150e084f24d29391c084c55272295ec65c85651bc35f4d6c",
                481280,
            ),
        ),
        _unpack_into("stanford_dogs"),
    ),
    "mit_indoor67": ArchiveSet(
        (
            Archive("indoorCVPR_09.tar", "http://groups.csail.mit.edu/vision/LabelMe/NewImages/indoorCVPR_09.tar", None),
            Archive("TrainImages.txt", "http://web.mit.edu/torralba/www/TrainImages.txt", None),
            Archive("TestImages.txt", "http://web.mit.edu/torralba/www/TestImages.txt", None),
        ),
        _unpack_into("mit_indoor67"),
    ),
    "uc_merced_full": ArchiveSet(
        (
            Archive(
                "UCMerced_LandUse.zip",
                "http://weegee.vision.ucmerced.edu/datasets/UCMerced_LandUse.zip",
                "06c539ef28703a58fb07bd2837991ac7c48b813b00bb12ac197efd813a18daeb",
                332468434,
            ),
        ),
        _unpack_into("."),
    ),
    "ucf101": ArchiveSet(_DECATHLON, _unpack_decathlon("ucf101")),
    "omniglot_decathlon": ArchiveSet(_DECATHLON, _unpack_decathlon("omniglot")),
}


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_archives(name: str, root: Path) -> tuple[Path, ...]:
    """The verified archive paths of ``name``; a one-line KitError for the first missing or bad one."""
    paths = []
    for archive in ARCHIVE_SETS[name].archives:
        path = root / archive.file
        if not path.is_file():
            raise KitError(
                f"dataset '{name}' needs '{path}': download {archive.url} and save it there, "
                f"then run `python -m adafilter_lib prepare {name} --root {root}` again"
            )
        if archive.sha256 is not None and sha256_of(path) != archive.sha256:
            raise KitError(f"'{path}' does not match its published SHA-256 {archive.sha256[:12]}…; download {archive.url} again")
        paths.append(path)
    return tuple(paths)


def prepare(name: str, root: str | Path = "data") -> Path:
    """Get dataset ``name`` ready under ``root`` and write its split list; returns the list's path."""
    root = Path(root)
    spec = get_spec(name)  # unknown names fail here, listing the valid ones
    if spec.offline:
        raise KitError(f"dataset '{name}' ships with a Python package or is your own folder; nothing to prepare")
    if name in ARCHIVE_SETS:
        paths = check_archives(name, root)  # before anything is written
        ARCHIVE_SETS[name].unpack(root, paths)
    pool = spec.load(DataConfig(dataset=name, root=str(root)))  # torchvision sets download here
    rows = [
        {"path": str(p), "label": int(l), "split": split}
        for split, part in (("train", pool.train), ("test", pool.test))
        for p, l in zip(part.paths, part.labels)
    ]
    out = root / "splits" / f"{name}.csv"
    atomic_write_text(out, pd.DataFrame(rows).to_csv(index=False))
    return out
