"""A backbone's stages: the unit that surgical fine-tuning trains, Fine-Pruning prunes and the figures group by.

A stage is a ResNet ``layerN``, a timm EfficientNet ``blocks.N`` or a MobileNet ``features.N``, named by its
module path inside ``TransferModel.features``. Around the stages, everything before the first one is the
``stem`` and everything after the last one the ``head_conv`` (Lite0's 1x1 conv to 1,280 channels; the new
classifier is ``TransferModel.head``, never a stage).
"""

from __future__ import annotations

import re

from torch import nn

_STAGE = re.compile(r"^(layer\d+|blocks\.\d+|features\.\d+)")
STEM, HEAD_CONV = "stem", "head_conv"


def stage_of(layer: str) -> str:
    """The stage a layer belongs to, from its name inside ``model.features`` (e.g. ``layer2.0.conv1`` -> ``layer2``);
    a layer outside every stage is named by its first component (``conv_stem``)."""
    match = _STAGE.match(layer)
    return match.group(1) if match else layer.split(".")[0]


def stages_in_order(layers: list[str], stage_pattern: str) -> list[str]:
    """The stage of each layer, given in forward order (names inside ``model.features``): layers matching
    ``stage_pattern`` (``BackboneSpec.stage_pattern``) are in their stage, those before the first of them in the
    ``stem`` and those after in the ``head_conv``."""
    stages, seen_stage = [], False
    for name in layers:
        if re.search(stage_pattern, name):
            stages.append(stage_of(name))
            seen_stage = True
        else:
            stages.append(HEAD_CONV if seen_stage else STEM)
    return stages


def module_stages(features: nn.Module, stage_pattern: str) -> dict[str, list[str]]:
    """Every module of ``features`` that holds parameters, grouped by stage, in forward order.

    Args:
        features: the backbone (``TransferModel.features``).
        stage_pattern: the backbone spec's regex for modules inside its stages (``BackboneSpec.stage_pattern``;
            MobileNet's ``features.0`` and ``features.18`` fall outside it, so they become ``stem`` and ``head_conv``).

    Returns:
        ``{"stem": [...], "blocks.0": [...], ..., "head_conv": [...]}``: module names inside ``features``; a backbone
        without a head conv (ResNet) has no ``head_conv`` entry.
    """
    names = [n for n, m in features.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    stages: dict[str, list[str]] = {}
    for name, stage in zip(names, stages_in_order(names, stage_pattern)):
        stages.setdefault(stage, []).append(name)
    return stages
