"""Image transforms: augmentation presets for training and the matching evaluation transform.

Every transform maps a PIL image or a uint8 tensor of shape (C, H, W) with C in {1, 3, 4} to a
float tensor of shape (3, R, R), normalized with the backbone's ImageNet ``(mean, std)``.
Grayscale images (digits, Omniglot, a few Caltech-256 photos) are repeated to three channels so
that pretrained RGB stems see the input they were trained on. Geometry runs on uint8 (cheaper
than float on CPU), and conversion to float and normalization come last.

Presets (``DataConfig.augment``; ``None`` picks the dataset's default):

* ``none``: no augmentation; the evaluation transform.
* ``light``: the evaluation transform, then a small ``RandomAffine`` (±10°, translate 0.1,
  scale 0.9–1.1). No flips: a flipped digit or character is another symbol.
* ``standard``: ``RandomResizedCrop(R, scale=(0.5, 1))`` and a horizontal flip (natural images).

The evaluation transform of natural images resizes the shorter side to ``R * 8 / 7`` and crops
the centre ``R x R`` (the ImageNet 256→224 ratio); digit-like sets are resized to ``R x R``
directly, since cropping would cut off strokes that touch the border.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..core.errors import unknown_name

PRESETS = ("none", "light", "standard")


class ToRGB:
    """Make a (C, H, W) image three-channel: repeat a gray channel, drop an alpha channel.

    Shape:
        input (1|3|4, H, W) -> output (3, H, W), same dtype.
    """

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        channels = img.shape[-3]
        if channels == 3:
            return img
        if channels == 1:
            # repeat (a contiguous copy) rather than expand (a strided view): the resize
            # kernels that follow are faster on contiguous memory.
            return tv_tensors.Image(img.repeat(3, 1, 1))
        if channels == 2:  # gray + alpha
            return tv_tensors.Image(img[:1].repeat(3, 1, 1))
        return tv_tensors.Image(img[:3])

    def __repr__(self) -> str:
        return "ToRGB()"


def check_preset(preset: str) -> str:
    """Return ``preset`` if it is a known augmentation preset; raise a :class:`KitError` otherwise."""
    if preset not in PRESETS:
        raise unknown_name("augment preset", str(preset), PRESETS)
    return preset


def _eval_geometry(resolution: int, natural: bool) -> list:
    if natural:
        return [v2.Resize(round(resolution * 8 / 7)), v2.CenterCrop(resolution)]
    return [v2.Resize((resolution, resolution))]


def _finish(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def eval_transform(resolution: int, mean: Sequence[float], std: Sequence[float], natural: bool = True) -> v2.Compose:
    """The deterministic transform used for validation, test and clean train-error numbers.

    Args:
        resolution: output side ``R`` in pixels.
        mean: per-channel mean of the backbone's input normalization (3 values).
        std: per-channel standard deviation (3 values).
        natural: natural photos (resize + centre crop) or digit-like images (plain resize).

    Returns:
        A callable mapping a PIL image or uint8 tensor to a normalized float tensor.

    Shape:
        output (3, R, R), float32.
    """
    return v2.Compose([v2.ToImage(), ToRGB(), *_eval_geometry(resolution, natural), *_finish(mean, std)])


def train_transform(
    preset: str, resolution: int, mean: Sequence[float], std: Sequence[float], natural: bool = True
) -> v2.Compose:
    """The training transform of an augmentation preset.

    Args:
        preset: one of :data:`PRESETS` (``none``, ``light``, ``standard``).
        resolution: output side ``R`` in pixels.
        mean: per-channel mean of the backbone's input normalization (3 values).
        std: per-channel standard deviation (3 values).
        natural: whether the dataset holds natural photos (affects ``none`` and ``light``, which
            start from the evaluation geometry).

    Returns:
        A callable mapping a PIL image or uint8 tensor to a normalized float tensor.

    Shape:
        output (3, R, R), float32.
    """
    check_preset(preset)
    if preset == "standard":
        geometry = [v2.RandomResizedCrop(resolution, scale=(0.5, 1.0)), v2.RandomHorizontalFlip()]
    else:
        geometry = _eval_geometry(resolution, natural)
        if preset == "light":
            # After the resize: the affine then interpolates an R x R image rather than an
            # 8 x 8 digit, and its translation is measured in output pixels.
            geometry.append(v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))
    return v2.Compose([v2.ToImage(), ToRGB(), *geometry, *_finish(mean, std)])
