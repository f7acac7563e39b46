"""Per-task answers to "what should be fine-tuned": LP-FT and surgical fine-tuning.

- ``lp_ft`` (Kumar, Raghunathan, Jones, Ma, Liang; ICLR 2022): ``method.lp_ft.probe_epochs`` epochs of a
  linear probe (backbone frozen, BN statistics included; the head at ``method.lp_ft.probe_lr``), then every
  parameter fine-tunes from that head for the remaining epochs (backbone at ``optim.lr``, head at
  ``optim.head_lr``). A random head's large early gradients distort the pretrained features; a probed head
  does not. Each phase follows ``optim.schedule`` over its own steps (``core.optim.build_scheduler``'s phases).
  One optimizer serves both phases: the backbone gets no gradient in the probe, so its optimizer state starts
  empty with the fine-tuning phase; the head's momentum carries over (the reference code fits the probe with
  a separate solver; with a schedule that ends the probe at rate 0, what carries over is small).
- ``surgical`` (Lee, Chen, Tajwar, Kumar, Yao, Liang, Finn; ICLR 2023): one contiguous stage of the backbone
  (``method.surgical.stage``: ``stem``, a ``blocks.N`` / ``layerN`` stage, or ``head_conv``; see
  ``core.stages``) and the new head train; everything else stays frozen, BN statistics too unless
  ``method.surgical.frozen_bn_stats`` is false. The stage is a grid axis, chosen on validation.
"""

from __future__ import annotations

from torch import nn

from ..core.distributed import world_size
from ..core.errors import KitError, unknown_name
from ..core.model import TransferModel, backbone_spec
from ..core.stages import module_stages
from .base import Method, lr_groups


class LPFT(Method):
    name = "lp_ft"

    def prepare(self, model: TransferModel) -> None:
        if world_size() > 1:
            # DDP fixes the set of parameters that receive gradients when it wraps the model; the probe changes it.
            raise KitError("lp_ft does not run under DDP (torchrun) yet: train it in one process")
        model.requires_grad_(True)  # every group enters the optimizer; begin_epoch freezes the backbone in the probe
        self.probing = True

    def begin_epoch(self, model: TransferModel, epoch: int) -> None:
        self.probing = epoch < self.cfg.method.lp_ft.probe_epochs
        model.features.requires_grad_(not self.probing)  # no gradient, no optimizer state, bit-exact backbone

    def param_groups(self, model: TransferModel) -> list[dict]:
        optim, probe = self.cfg.optim, self.cfg.method.lp_ft
        groups = lr_groups({"backbone": (model.features, optim.lr), "head": (model.head, optim.head_lr)})
        phases = {
            "backbone": [(probe.probe_epochs, optim.epochs, optim.lr)],
            "head": [(0, probe.probe_epochs, probe.probe_lr), (probe.probe_epochs, optim.epochs, optim.head_lr)],
        }
        return [{**group, "phases": phases[group["name"]]} for group in groups]

    def train_mode(self, model: TransferModel) -> None:
        model.train()
        if self.probing:
            model.features.eval()  # the probe's backbone keeps its pretrained BN statistics, as linear_probe's


class Surgical(Method):
    name = "surgical"

    def prepare(self, model: TransferModel) -> None:
        stages = module_stages(model.features, backbone_spec(self.cfg.model.backbone).stage_pattern)
        stage = self.cfg.method.surgical.stage
        if stage not in stages:
            raise unknown_name(f"method.surgical.stage for {self.cfg.model.backbone}", stage, stages)
        self.trained_modules = [model.features.get_submodule(name) for name in stages[stage]]
        model.requires_grad_(False)
        model.head.requires_grad_(True)
        for module in self.trained_modules:
            module.requires_grad_(True)

    def param_groups(self, model: TransferModel) -> list[dict]:
        return lr_groups({"backbone": (model.features, self.cfg.optim.lr), "head": (model.head, self.cfg.optim.head_lr)})

    def train_mode(self, model: TransferModel) -> None:
        model.train()
        for module in model.features.modules():  # frozen stages: dropout off, BN statistics as the setting says
            frozen_stats = self.cfg.method.surgical.frozen_bn_stats or not isinstance(module, nn.modules.batchnorm._BatchNorm)
            module.training = not frozen_stats
        for module in self.trained_modules:
            module.train()


PARTIAL_FINETUNE_METHODS = (LPFT, Surgical)
