"""SpotTune (Guo et al., CVPR 2019; official code gyhui14/spottune), a baseline on ResNet backbones.

Every residual block gets a frozen copy and a fine-tuned copy, both starting from the pretrained
block. A small, randomly initialized policy network looks at the input image and gives 2 logits per
block; a hard Gumbel-softmax sample (temperature 5, straight-through) picks, per image and block,
which copy runs: ``x = (1 - g) * frozen(x) + g * finetuned(x)``. At evaluation the choice is the
argmax (the official code samples there too: ``method.spottune.eval_policy=sample``).

Choices of ours: the stem (conv1, bn1) and the head are shared and fine-tuned; the frozen copies stay
in evaluation mode (ImageNet BN statistics), so forcing every gate to 0 gives the pretrained
network. The model returns ``ModelOutput(logits, gates)`` with ``gates[block]`` of shape (B, 1), so
the gate statistics and per-image records of AdaFilter work unchanged.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from ..adafilter.gates import GateCollector
from ..core.errors import KitError
from ..core.method_config import SpotTuneConfig
from ..core.model import ModelOutput, TransferModel
from .base import Method, lr_groups

SUPPORTED_BACKBONES = ("resnet18", "resnet34", "resnet50")


class PolicyNet(nn.Module):
    """A ResNet-8-like policy network: image -> 2 logits per block.

    Shape:
        images (B, 3, H, W) -> logits (B, num_blocks, 2).
    """

    def __init__(self, num_blocks: int, width: int = 16):
        super().__init__()
        self.num_blocks = num_blocks
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages, channels = [], width
        for out in (width, 2 * width, 4 * width):
            down = nn.Sequential(nn.Conv2d(channels, out, 1, 2, bias=False), nn.BatchNorm2d(out))
            stages.append(BasicBlock(channels, out, stride=2, downsample=down))
            channels = out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, 2 * num_blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.stages(self.stem(images)), 1).flatten(1)  # (B, 4 * width)
        return self.fc(pooled).view(-1, self.num_blocks, 2)


class SpotTuneModel(TransferModel):
    """A torchvision ResNet whose blocks each have a frozen and a fine-tuned copy, chosen per image.

    Attributes:
        forced: None (the policy decides), 0 (every block frozen) or 1 (every block fine-tuned).
    Shape:
        input (B, 3, H, W); output ModelOutput(logits (B, K), gates {block name: (B, 1)}), 1 = fine-tuned.
    """

    def __init__(self, base: TransferModel, cfg: SpotTuneConfig):
        nn.Module.__init__(self)  # adopt base's modules as they are (no new head, no RNG draws)
        self.features, self.dropout, self.head = base.features, base.dropout, base.head
        self.block_names = [
            f"{stage}.{i}"
            for stage in ("layer1", "layer2", "layer3", "layer4")
            for i in range(len(getattr(base.features, stage)))
        ]
        self.frozen = nn.ModuleList(copy.deepcopy(self.features.get_submodule(n)) for n in self.block_names)
        self.frozen.requires_grad_(False)
        self.policy = PolicyNet(len(self.block_names), cfg.policy_width)
        self.temperature, self.eval_policy = cfg.temperature, cfg.eval_policy
        self.forced: Optional[int] = None

    def choose(self, images: torch.Tensor) -> torch.Tensor:
        """Gates (B, num_blocks): hard 0/1 values; in training (or ``sample``) with the straight-through gradient."""
        if self.forced is not None:
            return images.new_full((images.shape[0], len(self.block_names)), float(self.forced))
        logits = self.policy(images).float()  # (B, N, 2)
        if self.training or self.eval_policy == "sample":
            action = F.gumbel_softmax(logits, tau=self.temperature, hard=True)  # one-hot forward, soft gradient
        else:
            action = F.one_hot(logits.argmax(-1), 2).to(logits.dtype)
        return action[..., 1]

    def forward(self, images: torch.Tensor) -> ModelOutput:
        gates = self.choose(images)  # (B, N)
        f = self.features
        x = f.maxpool(f.relu(f.bn1(f.conv1(images))))
        for i, (name, frozen) in enumerate(zip(self.block_names, self.frozen)):
            g = gates[:, i].to(x.dtype)[:, None, None, None]  # (B, 1, 1, 1)
            x = (1 - g) * frozen(x) + g * f.get_submodule(name)(x)
        pooled = torch.flatten(f.avgpool(x), 1)  # (B, D)
        return ModelOutput(self.head(self.dropout(pooled)), {n: gates[:, i : i + 1] for i, n in enumerate(self.block_names)})


class SpotTune(Method):
    name = "spottune"

    def build_model(self, model: TransferModel) -> SpotTuneModel:
        if self.cfg.model.backbone not in SUPPORTED_BACKBONES:
            raise KitError(
                f"spottune needs a ResNet backbone; got '{self.cfg.model.backbone}', supported: {', '.join(SUPPORTED_BACKBONES)}"
            )
        return SpotTuneModel(model, self.cfg.method.spottune).to(next(model.parameters()).device)

    def eval_collector(self, num_classes: int, split: str) -> GateCollector:
        """The per-block choices recorded as gates of width 1, as AdaFilter's per-filter ones are."""
        return GateCollector(num_classes, record_images=split == "test")

    def prepare(self, model: SpotTuneModel) -> None:
        model.requires_grad_(True)
        model.frozen.requires_grad_(False)

    def param_groups(self, model: SpotTuneModel) -> list[dict]:
        return lr_groups(
            {
                "backbone": (model.features, self.cfg.optim.lr),
                "policy": (model.policy, self.cfg.method.spottune.policy_lr),
                "head": (model.head, self.cfg.optim.head_lr),
            }
        )

    def train_mode(self, model: SpotTuneModel) -> None:
        model.train()
        model.frozen.eval()  # the frozen copies keep the pretrained BN statistics
