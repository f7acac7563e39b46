"""Image files on disk: the file-backed ``Dataset`` and the ``folder:PATH`` dataset.

``folder:PATH`` points the kit at any folder of class subfolders (the ImageFolder layout)::

    PATH/<class>/<image>.jpg                 test = fixed 20% of each class, val from the rest
    PATH/train/<class>/..., PATH/test/<class>/...   test = test/, val carved from train/

User folders are where corrupt files live, so every image is opened and ``verify()``-ed once when
the dataset is built: the error names the file before training starts instead of crashing it
mid-epoch. Loading an image that still fails later raises the same one-line :class:`KitError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..core.errors import KitError
from .splits import TEST_SEED, Pool, stratified_holdout

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FOLDER_TEST_FRACTION = 0.2


def first_line(err: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line errors."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def unreadable_image(path: str | Path, err: BaseException) -> KitError:
    """The error for an image file PIL cannot read (one line, names the file and the fix)."""
    return KitError(f"image '{path}' cannot be read ({first_line(err)}); remove or replace the file")


class FileImages(Dataset):
    """Image files with integer labels; each item is loaded, converted to RGB and transformed.

    Args:
        paths: image file paths, length N.
        labels: integer labels, shape (N,).
        transform: callable applied to the RGB PIL image; ``None`` returns the PIL image.

    Shape:
        item: ``(transform(image), label)``, e.g. a (3, R, R) float tensor and an int.
    """

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], transform: Optional[Callable] = None):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = [str(p) for p in paths]  # plain strings: cheap to pickle into workers
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                # Palette, gray, CMYK and RGBA files all become RGB here; load() happens inside
                # convert, so truncated files fail now, inside the try.
                image = _to_8bit(image, path).convert("RGB")
        except KitError:
            raise
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
            raise unreadable_image(path, err) from None
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def subset(self, indices: np.ndarray, transform: Optional[Callable] = None) -> "FileImages":
        """The files at ``indices`` with ``transform``."""
        return FileImages([self.paths[i] for i in np.asarray(indices, dtype=np.int64)], self.labels[indices], transform)


def _to_8bit(image: Image.Image, path) -> Image.Image:
    """16-bit gray images scaled to 8 bits (PIL's ``convert`` clips them: a 16-bit PNG became near-white), and
    32-bit float images (mode ``F``, e.g. float TIFFs) from [0, 1] (PIL's ``convert`` reads 0..1 as 0..1 of 255:
    nearly black) or [0, 255].

    Raises:
        KitError: a 32-bit integer image with values beyond 16 bits, or a float image with values that are not
            finite or outside [0, 255] (no known range to scale).
    """
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
            raise KitError(
                f"image '{path}' is a float image with values outside [0, 1] and [0, 255] or not finite; "
                f"save it as 8-bit or scale it to [0, 1]"
            )
        scale = 255.0 if values.max() <= 1.0 else 1.0
        return Image.fromarray(np.round(values * scale).astype(np.uint8))
    if image.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return image
    values = np.asarray(image, dtype=np.int64)
    if values.min() < 0 or values.max() > 65535:
        raise KitError(
            f"image '{path}' is a 32-bit integer image ({values.min()}..{values.max()}); save it as 8- or 16-bit, or remove it"
        )
    return Image.fromarray((values // 257).astype(np.uint8))  # 0..65535 -> 0..255, mode L


def verify_images(paths: Sequence[str | Path]) -> None:
    """Open every image once and check it with ``PIL.Image.verify`` (headers and, for PNG, CRCs).

    Raises:
        KitError: naming the first unreadable file.
    """
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:
            raise unreadable_image(path, err) from None


def is_image_file(path: Path) -> bool:
    """An image by extension (case-insensitive), skipping hidden files such as macOS ``._x.jpg``."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def images_in(folder: Path) -> list[Path]:
    """The image files anywhere below ``folder``, sorted (so label order is reproducible)."""
    return sorted(
        p for p in folder.rglob("*") if is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def class_dirs(root: Path) -> list[Path]:
    """The non-hidden subfolders of ``root``, sorted by name."""
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def scan_class_folders(root: Path, classes: Optional[list[str]] = None) -> tuple[list[str], list[Path], np.ndarray]:
    """List the images of a folder of class subfolders.

    Args:
        root: folder with one subfolder per class.
        classes: the known class names (e.g. those of ``train/`` when scanning ``test/``); a
            subfolder outside them is an error. ``None`` takes the subfolders as the classes.

    Returns:
        ``(classes, paths, labels)`` with labels indexing ``classes``, shape (N,).
    """
    dirs = class_dirs(root)
    if not dirs:
        raise KitError(
            f"data folder '{root}' has no class subfolders; put the images of each class in their "
            f"own subfolder ({root}/<class>/<image>.jpg)"
        )
    known = [d.name for d in dirs] if classes is None else classes
    index = {name: i for i, name in enumerate(known)}
    paths, labels = [], []
    for d in dirs:
        if d.name not in index:
            raise KitError(
                f"class folder '{d}' has no counterpart among the training classes ({', '.join(known)}); rename or remove it"
            )
        found = images_in(d)
        if not found:
            raise KitError(f"class folder '{d}' has no images ({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
        paths += found
        labels += [index[d.name]] * len(found)
    return list(known), paths, np.asarray(labels, dtype=np.int64)


def load_folder_pool(path: str | Path, verify: bool = True) -> Pool:
    """The ``folder:PATH`` dataset: class subfolders, optionally under ``train/`` and ``test/``.

    Args:
        path: the data folder.
        verify: check every image with PIL once (recommended; the error then comes before training).

    Returns:
        A :class:`~adafilter_lib.data.splits.Pool`; without ``train/``/``test/`` a fixed,
        stratified 20% of each class (constant seed) is the test set.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise KitError(
            f"data folder '{root}' does not exist; create it with one subfolder per class "
            f"({root}/<class>/<image>.jpg), or with train/ and test/ folders laid out that way"
        )
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes, train_paths, train_labels = scan_class_folders(root / "train")
        _, test_paths, test_labels = scan_class_folders(root / "test", classes)
    else:
        classes, paths, labels = scan_class_folders(root)
        rest, test = stratified_holdout(labels, FOLDER_TEST_FRACTION, TEST_SEED, classes, "test")
        train_paths, train_labels = [paths[i] for i in rest], labels[rest]
        test_paths, test_labels = [paths[i] for i in test], labels[test]
    if verify:
        verify_images(train_paths + test_paths)
    return Pool(classes, FileImages(train_paths, train_labels), FileImages(test_paths, test_labels))
