"""Turn a :class:`~adafilter_lib.core.model.TransferModel` into its AdaFilter form.

Every selected ``nn.Conv2d`` of the backbone and the BatchNorm that follows it become one
:class:`GatedSite` (a :class:`~adafilter_lib.adafilter.layers.GatedConv2d` plus the hook that asks the gate
network for its gates); the BN's place keeps only what came after the normalization (timm's
``BatchNormAct2d`` applies its activation there). Which BN follows which conv is read off one traced
forward pass, so the same code converts torchvision ResNets and MobileNetV2 and timm's EfficientNets.

:class:`AdaFilterModel` returns ``ModelOutput(logits, gates)`` with ``gates[name]`` of shape
``(B, C_out)`` for every gated layer, keyed by the conv's module name in the backbone.
"""

from __future__ import annotations

import re
from typing import Optional

import torch
from torch import nn

from ..core.errors import unknown_name
from ..core.method_config import AdaFilterConfig
from ..core.model import ModelOutput, TransferModel
from ..core.stages import module_stages
from .gate_net import RecurrentGateNet, binarize_gates, pool_gate_input
from .layers import GatedConv2d


class GateRouter:
    """Decides the gates of every gated layer during one forward and keeps them for the model's output.

    Not an ``nn.Module``: it is shared by all sites and the model, and owns no parameters (the gate
    network it calls is a submodule of :class:`AdaFilterModel`). With ``gate_input="previous_output"``
    (the paper's Fig. 1) the first gate reads the pooled image and every later gate the pooled output
    of the gated layer before it; with ``"layer_input"`` each gate reads its own layer's input.
    """

    def __init__(self, cfg: AdaFilterConfig, gate_net: RecurrentGateNet, names: list[str], sample_seed: int = 0):
        self.cfg, self.gate_net, self.names = cfg, gate_net, names
        self.training = self.all_ones = False
        self.forced: Optional[str] = None  # "ones" / "zeros" beat the configured gates and the warm-up (counterfactual)
        self.gates: dict[str, torch.Tensor] = {}
        self.previous: Optional[torch.Tensor] = None  # (B, C) pooled output of the last gated layer (previous_output)
        self.sample_seed = sample_seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def begin(self, training: bool, all_ones: bool = False, images: Optional[torch.Tensor] = None) -> None:
        """Start one forward; ``all_ones`` overrides the gate mode with every gate 1 (gate warm-up)."""
        self.training, self.gates, self.all_ones = training, {}, all_ones
        self.gate_net.reset()
        if self.cfg.gate_input == "previous_output" and images is not None:
            self.previous = self._pool(images)

    def restart_sampling(self) -> None:
        """Re-seed the evaluation-time gate samples (``eval_gates`` sample / mean) with ``sample_seed``.

        Called whenever the model enters evaluation mode, so every evaluation pass of a run draws the same
        gates (resumed runs included) and another seed draws others.
        """
        for device, generator in self._generators.items():
            generator.manual_seed(self.sample_seed)

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.sample_seed)
        return self._generators[device]

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return pool_gate_input(x if self.cfg.gate_input_grad else x.detach())  # (B, C)

    def gates_for(self, index: int, x: torch.Tensor, out_channels: int) -> torch.Tensor:
        """Gates (B, C_out) of gated layer ``index`` whose input is ``x`` (B, C_in, H, W)."""
        mode, batch = (self.forced or ("ones" if self.all_ones else self.cfg.gates)), x.shape[0]
        if mode == "ones":
            gates = x.new_ones(batch, out_channels)
        elif mode == "zeros":
            gates = x.new_zeros(batch, out_channels)
        elif mode == "random":
            # Stochastic fine-tuning, sampled in evaluation too: the expected gate 0.5 would feed later
            # layers a mix whose statistics no BN saw in training (measured: 55% vs 18% test error).
            gates = torch.bernoulli(x.new_full((batch, out_channels), 0.5))
        else:
            pooled = self.previous if self.cfg.gate_input == "previous_output" else self._pool(x)  # (B, C_in)
            logits = self.gate_net.step(index, pooled)  # (B, C_out)
            cfg = self.cfg
            generator = None if self.training or cfg.eval_gates == "threshold" else self._generator(logits.device)
            gates = binarize_gates(logits, self.training, cfg.binarize, cfg.noise, cfg.temperature, cfg.eval_gates, generator)
        self.gates[self.names[index]] = gates
        return gates

    def layer_done(self, output: torch.Tensor) -> None:
        """Record a gated layer's output (B, C_out, H, W) as the next gate's input (``previous_output`` only)."""
        if self.cfg.gate_input == "previous_output":
            self.previous = self._pool(output)


class GatedSite(nn.Module):
    """The module placed where a conv was: asks the router for gates, then runs the gated conv."""

    def __init__(self, layer: GatedConv2d, index: int, router: GateRouter):
        super().__init__()
        self.layer, self.index = layer, index
        self.__dict__["router"] = router  # a plain reference, not a registered submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x, self.router.gates_for(self.index, x, self.layer.out_channels))
        self.router.layer_done(y)
        return y


class AdaFilterModel(TransferModel):
    """A TransferModel whose gated convs pick, per example and filter, pretrained or fine-tuned weights.

    Shape:
        input (B, 3, H, W); output ModelOutput(logits (B, K), gates {layer name: (B, C_out)}).
    """

    def __init__(self, base: TransferModel, router: GateRouter, gate_net: RecurrentGateNet):
        nn.Module.__init__(self)  # adopt base's modules as they are (no new head, no RNG draws)
        self.features, self.dropout, self.head = base.features, base.dropout, base.head
        self.gate_net = gate_net
        self.__dict__["router"] = router
        if router.cfg.gate_warmup_epochs > 0:
            # A buffer, so that a checkpoint taken during the warm-up evaluates with the gates it was trained with.
            self.register_buffer("gate_warmup", torch.zeros((), dtype=torch.bool))

    @property
    def gated_layer_names(self) -> list[str]:
        return list(self.router.names)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        warmup = "gate_warmup" in self._buffers and bool(self.gate_warmup)
        cfg = self.router.cfg
        if self.training or warmup or self.router.forced or cfg.gates != "learned" or cfg.eval_gates != "mean":
            return self._single_pass(images, warmup)
        # eval_gates="mean": average the class probabilities of K passes with sampled gates; the gates
        # reported are each filter's majority choice over the K draws.
        passes = [self._single_pass(images, False) for _ in range(cfg.eval_samples)]
        probs = torch.stack([p.logits.float().softmax(1) for p in passes]).mean(0)  # (B, K)
        gates = {
            name: (torch.stack([p.gates[name] for p in passes]).mean(0) >= 0.5).to(passes[0].gates[name].dtype)
            for name in passes[0].gates
        }
        return ModelOutput(probs.clamp_min(1e-12).log(), gates)

    def _single_pass(self, images: torch.Tensor, warmup: bool) -> ModelOutput:
        self.router.begin(self.training, warmup, images)
        pooled = self.features(images)  # gated sites fill router.gates in execution order
        return ModelOutput(self.head(self.dropout(pooled)), dict(self.router.gates))

    def train(self, mode: bool = True) -> "AdaFilterModel":
        """``nn.Module.train``; entering evaluation mode also re-seeds sampled evaluation gates."""
        super().train(mode)
        if not mode:
            self.router.restart_sampling()
        return self

    def gated_layers(self) -> dict[str, GatedConv2d]:
        return {name: module.layer for name, module in zip(self.router.names, self._sites())}

    def _sites(self) -> list[GatedSite]:
        return sorted((m for m in self.features.modules() if isinstance(m, GatedSite)), key=lambda m: m.index)


def trace_conv_bn_pairs(features: nn.Module, resolution: int = 64) -> list[tuple[str, Optional[str]]]:
    """(conv name, name of the BN applied right after it or None) for every conv, in execution order."""
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o, name=name: order.append(name))
        for name, m in features.named_modules()
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))
    ]
    was_training = features.training
    try:
        features.eval()
        with torch.no_grad():
            features(torch.zeros(1, 3, resolution, resolution, device=next(features.parameters()).device))
    finally:
        features.train(was_training)
        for hook in hooks:
            hook.remove()
    modules = dict(features.named_modules())
    pairs = []
    for i, name in enumerate(order):
        if not isinstance(modules[name], nn.Conv2d):
            continue
        nxt = order[i + 1] if i + 1 < len(order) else None
        follows = (
            nxt is not None
            and isinstance(modules[nxt], nn.BatchNorm2d)
            and modules[nxt].num_features == modules[name].out_channels
        )
        pairs.append((name, nxt if follows else None))
    return pairs


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What ``bn`` applied after normalizing: timm's BatchNormAct2d has ``drop`` and ``act``; plain BN nothing."""
    if hasattr(bn, "act"):
        return nn.Sequential(getattr(bn, "drop", nn.Identity()), bn.act)
    return nn.Identity()


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def convert_to_adafilter(model: TransferModel, cfg: AdaFilterConfig, stage_pattern: str, sample_seed: int = 0) -> AdaFilterModel:
    """Replace the selected convs (and their BNs) of ``model.features`` by gated sites.

    Args:
        model: a pretrained TransferModel (its weights become both filter banks).
        cfg: AdaFilter options (which layers, gated BN mode, gate network).
        stage_pattern: regex selecting the "stages" convs by module name (from the backbone spec); with
            ``cfg.gated_stage``, it also names the stages (``core.stages.module_stages``).
        sample_seed: seed of the evaluation-time gate samples (``eval_gates`` sample / mean): the run seed.
    Returns:
        The AdaFilterModel; it shares the head and every unconverted module with ``model``.
    """
    pairs = trace_conv_bn_pairs(model.features)
    if cfg.gated_stage is not None:  # every conv of that one stage, whatever gated_layers says
        stages = module_stages(model.features, stage_pattern)
        if cfg.gated_stage not in stages:
            raise unknown_name("method.adafilter.gated_stage", cfg.gated_stage, stages)
        pairs = [(conv, bn) for conv, bn in pairs if conv in stages[cfg.gated_stage]]
    elif cfg.gated_layers == "stages":
        pairs = [(conv, bn) for conv, bn in pairs if re.search(stage_pattern, conv)]
    names = [conv for conv, _ in pairs]
    convs = [model.features.get_submodule(conv) for conv in names]
    outputs = [c.out_channels for c in convs]
    # previous_output: gate 0 reads the pooled RGB image, gate l the pooled output of gated layer l - 1.
    inputs = [3, *outputs[:-1]] if cfg.gate_input == "previous_output" else [c.in_channels for c in convs]
    gate_net = RecurrentGateNet(inputs, outputs, cfg.hidden, cfg.gate_bias_init)
    router = GateRouter(cfg, gate_net, names, sample_seed)
    for index, ((conv_name, bn_name), conv) in enumerate(zip(pairs, convs)):
        bn = model.features.get_submodule(bn_name) if bn_name else None
        layer = GatedConv2d(conv, bn, gated_bn=cfg.gated_bn, bn_pretrained=cfg.bn_pretrained)
        _set_module(model.features, conv_name, GatedSite(layer, index, router))
        if bn_name:
            _set_module(model.features, bn_name, _after_norm(bn))
    return AdaFilterModel(model, router, gate_net).to(next(model.parameters()).device)
