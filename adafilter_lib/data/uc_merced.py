"""UC Merced Land Use (Yang & Newsam, ACM SIGSPATIAL GIS 2010): the kit's compact copy and the full release.

21 land-use classes x 100 aerial photos (USGS orthoimagery, public domain), 256 x 256 px in the release.
Two datasets read it, with one fixed test split (:data:`SPLIT_FILE`, 20 images per class by file stem),
so results at either resolution are scored on the same pictures:

* ``uc_merced``: the compact copy shipped inside the package (``bundled/uc_merced/<class>/<stem>.jpg``,
  :data:`COMPACT_SIZE` px, JPEG), offline. The 2,100 images are decoded once per process into one uint8
  array, so a run's data path is in-memory tensor work, as for the digit sets.
* ``uc_merced_full``: the full-resolution release under ``data.root``, either as unpacked from the
  official zip (``UCMerced_LandUse/Images/<class>/<stem>.tif``) or as class folders of the same stems
  in any image format (``uc_merced/<class>/<stem>.jpg``).

The split was carved once by :func:`carve_test_split` (stratified, seed ``TEST_SEED``) and written down;
``airplane01`` and ``airplane02`` are the same picture in the release, so the carving keeps them on one
side. ``write_compact_copy`` rebuilt the bundled copy from the release (see ``data/README.md``).
"""

from __future__ import annotations

import csv
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import KitError
from .folder import FileImages, class_dirs, images_in, unreadable_image
from .offline import ArrayImages
from .splits import TEST_SEED, Pool, stratified_holdout

COMPACT_SIZE = 128  # side of the bundled images (the release's 256 px halved)
COMPACT_QUALITY = 85  # JPEG quality of the bundled images (~12 MB for all 2,100)
TEST_PER_CLASS_FRACTION = 0.2
DUPLICATE_PAIR = ("airplane01", "airplane02")  # pixel-identical in the release: never split apart
RELEASE_HINT = (
    "download UCMerced_LandUse.zip from http://weegee.vision.ucmerced.edu/datasets/landuse.html and "
    "run `python -m adafilter_lib prepare uc_merced_full --root DIR`, or put class folders under DIR/uc_merced/"
)


def bundled_dir() -> Path:
    """The folder of the compact copy inside the installed package."""
    return Path(str(resources.files("adafilter_lib.data") / "bundled" / "uc_merced"))


SPLIT_FILE = "split.csv"  # columns: stem, class, split ("train" / "test"), inside bundled_dir()


def carve_test_split(stems: list[str], labels: np.ndarray, classes: list[str]) -> set[str]:
    """The test stems: a stratified 20 % of each class (seed ``TEST_SEED``), the duplicate pair on one side.

    If the seeded carving separates :data:`DUPLICATE_PAIR`, the second image trades places with the
    first image (in sorted order) on the first one's side, so every class keeps its count.

    Args:
        stems: file stems (``airplane00``), length N.
        labels: class indices, shape (N,).
        classes: class names (for messages).

    Returns:
        The set of test stems.
    """
    _, held = stratified_holdout(labels, TEST_PER_CLASS_FRACTION, TEST_SEED, classes, "test")
    test = {stems[i] for i in held}
    first, second = DUPLICATE_PAIR
    if first in stems and second in stems and (first in test) != (second in test):
        side = test if first in test else set(stems) - test
        cls = labels[stems.index(second)]
        partner = sorted(s for s in side if labels[stems.index(s)] == cls and s != first)[0]
        test ^= {second, partner}  # swap second and partner across the split
    return test


@lru_cache(maxsize=1)
def read_split() -> dict[str, tuple[str, str]]:
    """``{stem: (class, split)}`` from the bundled :data:`SPLIT_FILE` (2,100 rows, 420 of them test)."""
    with open(bundled_dir() / SPLIT_FILE, newline="") as handle:
        return {row["stem"]: (row["class"], row["split"]) for row in csv.DictReader(handle)}


def _classes() -> list[str]:
    return sorted({cls for cls, _ in read_split().values()})


@lru_cache(maxsize=1)
def _compact_arrays() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """All bundled images decoded once: (2100, S, S, 3) uint8, labels (2100,), stems; split order."""
    split, classes = read_split(), _classes()
    stems = sorted(split)
    images = np.empty((len(stems), COMPACT_SIZE, COMPACT_SIZE, 3), dtype=np.uint8)
    for i, stem in enumerate(stems):
        path = bundled_dir() / split[stem][0] / f"{stem}.jpg"
        try:
            with Image.open(path) as image:
                images[i] = np.asarray(image.convert("RGB"))
        except Exception as err:
            raise unreadable_image(path, err) from None
    labels = np.asarray([classes.index(split[s][0]) for s in stems], dtype=np.int64)
    return images, labels, tuple(stems)


def _split_indices(stems: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) index arrays of ``stems`` by the fixed split."""
    split = read_split()
    is_test = np.asarray([split[s][1] == "test" for s in stems])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def load_compact_pool(cfg=None) -> Pool:
    """The bundled ``uc_merced`` copy: 1,680 training-pool and 420 test images, 128 px, in memory.

    Args:
        cfg: the ``DataConfig`` (unused; loaders share one signature).
    """
    images, labels, stems = _compact_arrays()
    train, test = _split_indices(list(stems))
    return Pool(_classes(), ArrayImages(images[train], labels[train]), ArrayImages(images[test], labels[test]))


def release_folder(root: Path) -> Path:
    """The folder of class subfolders of a full-resolution release under ``root`` (zip layout first)."""
    for candidate in (root / "UCMerced_LandUse" / "Images", root / "uc_merced"):
        if candidate.is_dir() and class_dirs(candidate):
            return candidate
    raise KitError(
        f"dataset 'uc_merced_full' is not under '{root}' (UCMerced_LandUse/Images/<class>/*.tif or "
        f"uc_merced/<class>/*.jpg); {RELEASE_HINT}; the offline dataset 'uc_merced' needs no download"
    )


def load_full_pool(cfg) -> Pool:
    """``uc_merced_full``: the release's images under ``cfg.root``, split by the bundled :data:`SPLIT_FILE`.

    Only the classes present are loaded (a subset of the 21 works); every file must be an image of the
    release (its stem in the split file), so a stray or renamed file is an error, not a silent train image.
    """
    folder = release_folder(Path(getattr(cfg, "root", "data")).expanduser())
    split = read_split()
    classes, paths, labels = [], [], []
    for folder_class in class_dirs(folder):
        classes.append(folder_class.name)
        for path in images_in(folder_class):
            if split.get(path.stem, ("", ""))[0] != folder_class.name:
                raise KitError(
                    f"'{path}' is not an image of the UC Merced release's class '{folder_class.name}' "
                    f"(stems <class>00-<class>99); remove it, or load the folder as folder:{folder}"
                )
            paths.append(path)
            labels.append(len(classes) - 1)
    train, test = _split_indices([p.stem for p in paths])
    pool = FileImages(paths, np.asarray(labels, dtype=np.int64))
    return Pool(classes, pool.subset(train), pool.subset(test))


def write_compact_copy(source: str | Path, dest: str | Path, size: int = COMPACT_SIZE, quality: int = COMPACT_QUALITY) -> int:
    """Rebuild the compact copy from a full-resolution release: square centre crop, resize, JPEG; and the split.

    The 44 release images that are not 256 x 256 (242-257 px a side) are cropped to their shorter side
    first, so no image is stretched. The split is carved afresh with :func:`carve_test_split` (the same
    function that wrote the shipped one, so the same release gives the same file).

    Args:
        source: the release folder of class subfolders (e.g. ``UCMerced_LandUse/Images``).
        dest: the output folder (``<dest>/<class>/<stem>.jpg`` and ``<dest>/split.csv``).
        size: output side in pixels.
        quality: JPEG quality.

    Returns:
        The number of images written.
    """
    source, dest = Path(source), Path(dest)
    stems, labels, classes = [], [], [d.name for d in class_dirs(source)]
    for label, folder in enumerate(class_dirs(source)):
        for path in images_in(folder):
            with Image.open(path) as image:
                image = image.convert("RGB")
                side = min(image.size)
                left, top = (image.width - side) // 2, (image.height - side) // 2
                image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            (dest / folder.name).mkdir(parents=True, exist_ok=True)
            image.save(dest / folder.name / f"{path.stem}.jpg", "JPEG", quality=quality)
            stems.append(path.stem)
            labels.append(label)
    test = carve_test_split(stems, np.asarray(labels), classes)
    with open(dest / SPLIT_FILE, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["stem", "class", "split"])
        for stem, label in sorted(zip(stems, labels)):
            writer.writerow([stem, classes[label], "test" if stem in test else "train"])
    return len(stems)
