"""AdaFilter's recurrent gate network and the one binarization function.

For gated layer ``l`` (in execution order) the gate network sees the globally pooled input of that
layer, projects it to width ``d`` with a per-layer linear map, advances one ``LSTMCell`` shared by
all layers (state carried from layer to layer and reset at each forward), and a per-layer linear
head turns the hidden state into ``C_out`` gate logits. The LSTM is what makes the decisions of one
layer depend on those taken before it ("layer-wise recurrent gated network" in the paper).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.method_config import ADAFILTER_CHOICES

BINARIZE_MODES = ADAFILTER_CHOICES["binarize"]
NOISE_MODES = ADAFILTER_CHOICES["noise"]
EVAL_MODES = ADAFILTER_CHOICES["eval_gates"]


def binarize_gates(
    logits: torch.Tensor,
    training: bool,
    mode: str = "straight_through",
    noise: str = "none",
    temperature: float = 1.0,
    eval_mode: str = "threshold",
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Gate logits to gates in [0, 1]; 1 selects the fine-tuned filter.

    - ``straight_through``: the forward value is hard (0/1); the backward uses the gradient of the
      relaxed ``sigmoid(logits / temperature)``. In training, ``noise="logistic"`` perturbs the logits
      with logistic noise first: the hard gate is then a Bernoulli draw with ``P(1) = sigmoid(logits)``
      (a two-class Gumbel-softmax sample, as in SpotTune and ConvNet-AIG; the temperature shapes only
      the gradient). In evaluation, ``eval_mode="threshold"`` gives the deterministic ``logits > 0``;
      ``"sample"`` and ``"mean"`` draw the same Bernoulli gate with ``generator`` (the model averages
      ``mean``'s K draws, see :class:`~adafilter_lib.adafilter.network.AdaFilterModel`).
    - ``soft``: the continuous ``sigmoid(logits / temperature)`` in training and evaluation (ablation).

    Shape:
        logits: (B, C); returns (B, C).
    """
    if mode == "soft":
        return torch.sigmoid(logits / temperature if temperature != 1.0 else logits)
    if not training:
        if eval_mode == "threshold":
            return (logits > 0).to(logits.dtype)
        return (_logistic_noise(logits, generator) + logits > 0).to(logits.dtype)
    if noise == "logistic":
        logits = logits + _logistic_noise(logits)
    if temperature != 1.0:  # skipped at 1: a division per layer is measurable on CPU
        logits = logits / temperature
    return _StraightThrough.apply(torch.sigmoid(logits))


def _logistic_noise(like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Standard logistic noise of ``like``'s shape: ``logits + noise > 0`` is Bernoulli(sigmoid(logits))."""
    u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype).clamp_(1e-6, 1 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


class _StraightThrough(torch.autograd.Function):
    """Forward: exactly 0 or 1 (``soft > 0.5``); backward: the gradient of ``soft`` unchanged.

    ``hard + soft - soft.detach()`` is not exactly 0/1 in floating point (1 + 0.73 - 0.73 can be
    0.99999994), which would break the all-ones / all-zeros equivalences with plain networks.
    """

    @staticmethod
    def forward(ctx, soft: torch.Tensor) -> torch.Tensor:
        return (soft > 0.5).to(soft.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def pool_gate_input(x: torch.Tensor) -> torch.Tensor:
    """Global average pool of a gated layer's input, the gate network's view of it.

    The same values as ``adaptive_avg_pool2d(x, 1)``, but its backward hands autograd the gradient
    as an expanded (stride-0) view instead of a materialized tensor: ``adaptive_avg_pool2d``'s backward
    writes a full-size gradient in NCHW order even for a channels_last ``x``, which then has to be added,
    transposing, to the two convs' channels_last input gradients (measured: 4-7 % of a Lite0 step).

    Shape:
        x: (B, C, H, W); returns (B, C).
    """
    return _GlobalAvgPool.apply(x)


class _GlobalAvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.input_shape = x.shape
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # faster than mean() on channels_last

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = ctx.input_shape
        return (grad / (height * width))[:, :, None, None].expand(batch, channels, height, width)


class RecurrentGateNet(nn.Module):
    """One LSTM cell shared across layers; per-layer input projections and output heads.

    Args:
        in_channels: C_in of each gated layer, in execution order.
        out_channels: C_out of each gated layer, in execution order.
        hidden: LSTM width ``d``.
        bias_init: initial bias of every gate head: the gate logits start near this value, so it sets
            the early regime (0: undecided; > 0: lean to fine-tuned filters; < 0: to pretrained).
    Shape:
        step(l, pooled (B, C_in[l])) -> logits (B, C_out[l]).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int], hidden: int = 128, bias_init: float = 0.0):
        super().__init__()
        self.hidden = hidden
        self.projections = nn.ModuleList(nn.Linear(c, hidden) for c in in_channels)
        self.cell = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, c) for c in out_channels)
        for head in self.heads:
            nn.init.normal_(head.weight, std=0.01)  # small: early gates follow bias_init, not noise in h
            nn.init.constant_(head.bias, bias_init)
        self._state: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def reset(self) -> None:
        """Forget the recurrent state (called at the start of every model forward)."""
        self._state = None

    def step(self, layer: int, pooled: torch.Tensor) -> torch.Tensor:
        """Advance the shared LSTM by one gated layer and return that layer's gate logits (B, C_out)."""
        inputs = torch.relu(self.projections[layer](pooled.float()))  # (B, d)
        if self._state is None:
            zeros = inputs.new_zeros(inputs.shape[0], self.hidden)
            self._state = (zeros, zeros)
        h, c = self.cell(inputs, self._state)
        self._state = (h, c)
        return self.heads[layer](h)  # (B, C_out)
