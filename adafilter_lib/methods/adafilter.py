"""AdaFilter as a method, and its ablations (each a fixed choice of AdaFilter options).

Parameter groups: fine-tuned filters with their BN and the ungated backbone layers at ``optim.lr`` (with
``method.adafilter.gated_stage``, the ungated layers are frozen, BN statistics included, as surgical fine-tuning's),
the gate network at ``method.adafilter.gate_lr`` (with its own update rule when
``method.adafilter.gate_optimizer`` is set, e.g. AdamW beside SGD), the head at ``optim.head_lr``.
The pretrained filters are buffers, so no optimizer can touch them.

Ablations (``METHODS.md``): ``adafilter_random`` (Bernoulli 0.5 gates, akin to stochastic
fine-tuning), ``adafilter_all_finetuned`` (every gate 1: fine-tuning with gated BN),
``adafilter_all_pretrained`` (every gate 0: frozen gated filters), ``adafilter_no_gated_bn`` (one BN
after mixing) and ``adafilter_soft`` (continuous gates).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ..adafilter.gates import GateCollector
from ..adafilter.network import AdaFilterModel, convert_to_adafilter
from ..core.method_config import AdaFilterConfig
from ..core.model import ModelOutput, TransferModel, backbone_spec
from .base import Method, lr_groups


class AdaFilter(Method):
    name = "adafilter"
    overrides: dict = {}  # AdaFilter options an ablation fixes

    @property
    def options(self) -> AdaFilterConfig:
        return dataclasses.replace(self.cfg.method.adafilter, **self.overrides)

    def build_model(self, model: TransferModel) -> AdaFilterModel:
        return convert_to_adafilter(model, self.options, backbone_spec(self.cfg.model.backbone).stage_pattern, self.cfg.seed)

    def prepare(self, model: AdaFilterModel) -> None:
        model.requires_grad_(True)
        if self.options.gated_stage is not None:  # only the gated stage's fine-tuned bank learns in the backbone
            model.features.requires_grad_(False)
            for layer in model.gated_layers().values():
                layer.requires_grad_(True)
        for layer in model.gated_layers().values():
            if layer.bn_pretrained is not None:
                layer.bn_pretrained.requires_grad_(self.options.bn_pretrained == "trainable")

    def begin_epoch(self, model: AdaFilterModel, epoch: int) -> None:
        """Gate warm-up: every gate 1 for the first ``gate_warmup_epochs`` epochs, learned gates after."""
        self.warming_up = epoch < self.options.gate_warmup_epochs
        if self.options.gate_warmup_epochs > 0:
            model.gate_warmup.fill_(self.warming_up)

    def train_mode(self, model: AdaFilterModel) -> None:
        model.train()
        if self.options.gated_stage is not None:  # the frozen stages keep their pretrained BN statistics
            model.features.eval()
            for layer in model.gated_layers().values():
                layer.train()

    def param_groups(self, model: AdaFilterModel) -> list[dict]:
        groups = lr_groups(
            {
                "finetuned": (model.features, self.cfg.optim.lr),
                "gate_net": (model.gate_net, self.options.gate_lr),
                "head": (model.head, self.cfg.optim.head_lr),
            }
        )
        if self.options.gates != "learned":  # fixed gates: the gate network would get no gradient
            return [g for g in groups if g["name"] != "gate_net"]
        for group in groups:
            if group["name"] != "gate_net":
                continue
            if self.options.gate_optimizer:
                group["optimizer"] = self.options.gate_optimizer  # optim.build_optimizer honours it
            if self.options.gate_weight_decay is not None:
                group["weight_decay"] = self.options.gate_weight_decay  # a per-group value beats optim.weight_decay
        return groups

    def holdout_groups(self) -> set[str]:
        """The gate network, with ``gates_on_holdout``: gates learn from images their filters were not fitted on."""
        # in the warm-up every gate is 1 and the gate network is not even called: nothing to learn from held-out images
        learning = self.options.gates == "learned" and not getattr(self, "warming_up", False)
        return {"gate_net"} if self.options.gates_on_holdout and learning else set()

    def eval_collector(self, num_classes: int, split: str) -> GateCollector:
        return GateCollector(num_classes, record_images=split == "test")

    def extra_loss(self, model: AdaFilterModel, output: ModelOutput) -> Optional[torch.Tensor]:
        """The gate usage penalty, when on: ``lam * (mean(g) - target)^2`` over all gates of the batch
        (``usage_scope="all"``), or ``lam * mean_l (mean(g_l) - target)^2`` over the gated layers ``l``
        (``"layer"``, ConvNet-AIG's target-rate loss: no layer can drift to all-fine-tuned on its own).
        The hard gates carry the straight-through gradient, so the penalty reaches the gate network."""
        lam = self.options.usage_penalty
        if lam == 0 or not output.gates:
            return None
        target = self.options.usage_target
        if self.options.usage_scope == "layer":
            rates = torch.stack([g.float().mean() for g in output.gates.values()])  # (L,)
            return lam * ((rates - target) ** 2).mean()
        usage = torch.cat([g.flatten() for g in output.gates.values()]).mean()
        return lam * (usage - target) ** 2


def _ablation(name: str, **overrides) -> type[AdaFilter]:
    return type(f"AdaFilter_{name}", (AdaFilter,), {"name": name, "overrides": overrides})


ADAFILTER_METHODS = (
    AdaFilter,
    _ablation("adafilter_random", gates="random"),
    _ablation("adafilter_all_finetuned", gates="ones"),
    _ablation("adafilter_all_pretrained", gates="zeros"),
    _ablation("adafilter_no_gated_bn", gated_bn=False),
    _ablation("adafilter_soft", binarize="soft"),
)
