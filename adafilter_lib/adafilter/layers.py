"""AdaFilter's gated convolution and gated batch normalization (Guo et al., AAAI 2020, arXiv 1911.09659).

Each gated layer keeps the frozen pretrained filters ``weight_pretrained`` (a buffer: nothing can
train it by accident) and a trainable copy ``weight_finetuned``. For every example and every output
filter a gate ``g`` in [0, 1] (binary in the method proper) picks between the two paths::

    y = g * BN_finetuned(conv(x, weight_finetuned)) + (1 - g) * BN_pretrained(conv(x, weight_pretrained))

Gated BN keeps separate statistics for the two paths because their activations differ. The gate is
a ``forward`` argument (the routing is decided outside, by :mod:`adafilter_lib.adafilter.gate_net`), as in
timm's ``CondConv2d``. Both copies start equal, so at initialization every gate choice gives the
pretrained network's output.

Cost: the forward runs both filter banks; the backward needs input gradients through both and weight
gradients for the fine-tuned bank only, about 5/3 of a fine-tuning step in convolution FLOPs. At
evaluation both BNs are fixed affine maps: they are folded into their filter banks and the two banks run
as one convolution of twice the output channels (``fold_eval_bn``; equal to the unfolded layer up to float
rounding), so an evaluation step costs one wider conv and the mix instead of two convs and two BN passes.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from timm.layers.padding import pad_same
from torch import nn

from ..core.method_config import ADAFILTER_CHOICES

BN_PRETRAINED_MODES = ADAFILTER_CHOICES["bn_pretrained"]


class GatedConv2d(nn.Module):
    """A conv (+ its BN) with a frozen pretrained and a trainable fine-tuned filter bank, mixed per filter.

    Args:
        conv: the pretrained ``nn.Conv2d`` (plain, strided, grouped or depthwise; bias optional).
        bn: the ``nn.BatchNorm2d`` that followed it, or None when it had none.
        gated_bn: separate BN per path (AdaFilter); False mixes the two conv outputs before one
            trainable BN (the "no gated BN" ablation).
        bn_pretrained: how the pretrained path's BN behaves: ``stats`` (affine frozen, running
            statistics updated on target data), ``frozen`` (always uses ImageNet statistics) or
            ``trainable``.
    Shape:
        x: (B, C_in, H, W); gates: (B, C_out), 1 = fine-tuned filter; output: (B, C_out, H', W').
    """

    fold_eval_bn = True  # evaluation folds both BNs into the convs (False: the training path; the bench compares)

    def __init__(self, conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d] = None, gated_bn: bool = True, bn_pretrained: str = "stats"):
        super().__init__()
        if bn_pretrained not in BN_PRETRAINED_MODES:
            raise ValueError(f"bn_pretrained must be one of {BN_PRETRAINED_MODES}, got {bn_pretrained!r}")
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        # timm's TF ports ("tf_" models) pad strided convs dynamically, TensorFlow's "SAME" way.
        self.pad_same = type(conv).__name__ == "Conv2dSame"
        self.gated_bn = gated_bn and bn is not None
        self.bn_pretrained_mode = bn_pretrained
        self.register_buffer("weight_pretrained", conv.weight.detach().clone())
        self.weight_finetuned = nn.Parameter(conv.weight.detach().clone())
        if conv.bias is not None:
            self.register_buffer("bias_pretrained", conv.bias.detach().clone())
            self.bias_finetuned = nn.Parameter(conv.bias.detach().clone())
        else:
            self.bias_pretrained = self.bias_finetuned = None
        if bn is None:
            self.bn_finetuned = self.bn_pretrained = None
        elif self.gated_bn:
            self.bn_finetuned = _plain_bn(bn)
            self.bn_pretrained = _plain_bn(bn)
            self.bn_pretrained.requires_grad_(bn_pretrained == "trainable")
        else:
            self.bn_finetuned, self.bn_pretrained = _plain_bn(bn), None  # one BN after mixing
        self.train(self.training)  # the mode rule of train() (a frozen BN_pre in eval) holds from the start

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        g = gates.to(x.dtype)[:, :, None, None]  # (B, C_out, 1, 1)
        if self.pad_same:  # pad once for both filter banks
            x = pad_same(x, self.weight_finetuned.shape[-2:], self.stride, self.dilation)
        if self._foldable():
            return self._folded_forward(x, g)
        y_pre = self._pretrained_path(x)
        y_ft = self._conv(x, self.weight_finetuned, self.bias_finetuned)
        if self.gated_bn:
            y_ft = self.bn_finetuned(y_ft)
        # lerp is exact at both ends (g = 0 gives y_pre, g = 1 gives y_ft bit for bit) and one fused kernel.
        y = torch.lerp(y_pre, y_ft, g)
        if not self.gated_bn and self.bn_finetuned is not None:
            y = self.bn_finetuned(y)
        return y

    def _foldable(self) -> bool:
        """Evaluation with gated BN whose both BNs normalize with running statistics (fixed affine maps)."""
        bns = (self.bn_finetuned, self.bn_pretrained)
        return (
            self.fold_eval_bn
            and not self.training
            and self.gated_bn
            and all(not bn.training and bn.running_mean is not None for bn in bns)
        )

    def _folded_bank(self, weight, bias, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        """``conv(x, W, b)`` then eval BN as one conv: ``W * s`` and ``(b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``."""
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.affine:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0.0)
        if bias is not None:
            shift = shift + bias * scale
        return weight * scale.view(-1, 1, 1, 1), shift

    def _folded_forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Both banks with their BN folded in, then the mix.

        Output filter ``c`` is linear in its filter, so mixing outputs per (image, filter) equals convolving each
        image with its own mixed filters ``lerp(W_pre, W_ft, g[b])`` (exact for hard and soft gates, up to float
        rounding). A 1x1 dense conv (Lite0's expand and project convs, most of its multiply-adds) does that as
        one batched matmul: one conv's work instead of two. Other convs run both banks and mix the outputs; a
        depthwise conv keeps its fast kernel only with one output per group, so the banks are not stacked.

        Shape:
            x: (B, C_in, H, W) (already padded); g: (B, C_out, 1, 1); output: (B, C_out, H', W').
        """
        w_ft, b_ft = self._folded_bank(self.weight_finetuned, self.bias_finetuned, self.bn_finetuned)
        w_pre, b_pre = self._folded_bank(self.weight_pretrained, self.bias_pretrained, self.bn_pretrained)
        if self._pointwise() and x.shape[-1] * x.shape[-2] >= 16:
            batch, _, height, width = x.shape
            gates = g.flatten(1).to(w_pre.dtype)  # (B, C_out); the filters mix in their own precision (autocast)
            weight = torch.lerp(w_pre.flatten(1), w_ft.flatten(1), gates[:, :, None])  # (B, C_out, C_in)
            bias = torch.lerp(b_pre, b_ft, gates)  # (B, C_out)
            pixels = x.permute(0, 2, 3, 1).reshape(batch, height * width, -1)  # a view when x is channels_last
            y = torch.baddbmm(bias[:, None, :], pixels, weight.transpose(1, 2))  # (B, H W, C_out)
            return y.view(batch, height, width, -1).permute(0, 3, 1, 2)  # NCHW shape, channels_last memory
        y_pre = self._conv(x, w_pre, b_pre)
        return torch.lerp(y_pre, self._conv(x, w_ft, b_ft), g.to(y_pre.dtype))  # autocast: the convs' precision

    def _pointwise(self) -> bool:
        """A dense 1x1 conv with stride 1 and no padding: a matmul over pixels."""
        return (
            self.groups == 1
            and self.weight_finetuned.shape[-2:] == (1, 1)
            and self.stride in ((1, 1), 1)
            and (self.padding in ((0, 0), 0))
        )

    def _pretrained_path(self, x: torch.Tensor) -> torch.Tensor:
        """``BN_pre(conv(x, W_pre))`` with gated BN, else ``conv(x, W_pre)``.

        A ``frozen`` BN_pre is a fixed per-channel affine map, so it is folded into the filters and bias
        (``W * s``, ``b - mean * s`` with ``s = gamma / sqrt(var + eps)``): one full-size pass fewer in
        the forward and in the backward; equal to conv-then-BN up to float rounding.
        """
        bn = self.bn_pretrained
        if self.gated_bn and self.bn_pretrained_mode == "frozen" and bn.affine:
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # (C_out,)
            shift = bn.bias - bn.running_mean * scale
            if self.bias_pretrained is not None:
                shift = shift + self.bias_pretrained * scale
            return self._conv(x, self.weight_pretrained * scale.view(-1, 1, 1, 1), shift)
        y = self._conv(x, self.weight_pretrained, self.bias_pretrained)
        # a frozen BN_pre is in eval mode (see train), so it normalizes with its ImageNet statistics
        return self.bn_pretrained(y) if self.gated_bn else y

    def train(self, mode: bool = True) -> "GatedConv2d":
        """Like ``nn.Module.train``, but a ``frozen`` pretrained BN stays in evaluation mode.

        Then it normalizes with its ImageNet statistics in training too, and nothing that recomputes the
        statistics of training-mode BNs (``engine.recalibrate_bn``, "precise BN") can overwrite them.
        """
        super().train(mode)
        if self.bn_pretrained is not None and self.bn_pretrained_mode == "frozen":
            self.bn_pretrained.eval()
        return self

    def plain_finetuned(self) -> nn.Sequential:
        """A plain conv (+ BN) carrying the fine-tuned filters and BN: what this layer computes for gates = 1."""
        if self.pad_same:
            raise NotImplementedError("plain_finetuned is for convs with static padding")
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.weight_finetuned.shape[-2:],
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            bias=self.bias_finetuned is not None,
        )
        conv.weight.data.copy_(self.weight_finetuned.data)
        if self.bias_finetuned is not None:
            conv.bias.data.copy_(self.bias_finetuned.data)
        return nn.Sequential(conv, copy.deepcopy(self.bn_finetuned) if self.bn_finetuned is not None else nn.Identity())

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.weight_finetuned.shape[-2:])}, "
            f"stride={self.stride}, groups={self.groups}, gated_bn={self.gated_bn}, bn_pretrained={self.bn_pretrained_mode}"
        )


@contextmanager
def unfolded_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate ``model``'s gated layers on the training path (conv, then each BN) instead of the folded conv:
    bit for bit what the layer math defines (gates 0 give the pretrained network exactly), a little slower."""
    layers = [m for m in model.modules() if isinstance(m, GatedConv2d)]
    saved = [layer.fold_eval_bn for layer in layers]
    for layer in layers:
        layer.fold_eval_bn = False
    try:
        yield model
    finally:
        for layer, fold in zip(layers, saved):
            layer.fold_eval_bn = fold


def _plain_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    """A plain ``BatchNorm2d`` copy of ``bn`` (timm's BatchNormAct2d also carries an activation, kept outside)."""
    plain = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    plain.load_state_dict({k: v for k, v in bn.state_dict().items() if k in plain.state_dict()})
    return plain


def reference_gated_conv(layer: GatedConv2d, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """The naive per-example loop that :meth:`GatedConv2d.forward` must equal (kept for tests).

    Each example's output filter ``c`` is taken from the fine-tuned path when ``gates[b, c] == 1``
    and from the pretrained path otherwise (hard gates only). Both paths see the whole batch, so BN
    in training mode normalizes with the same batch statistics as the fast path.
    """
    ft = layer.bn_finetuned(layer._conv(x, layer.weight_finetuned, layer.bias_finetuned))
    pre = layer.bn_pretrained(layer._conv(x, layer.weight_pretrained, layer.bias_pretrained))
    out = torch.empty_like(ft)
    for b in range(x.shape[0]):
        for c in range(layer.out_channels):
            out[b, c] = ft[b, c] if gates[b, c] >= 0.5 else pre[b, c]
    return out
