"""Structured (channel) pruning through Torch-Pruning: a plain, smaller network, its cost, and loading it back.

Torch-Pruning's dependency graph (Fang et al., CVPR 2023, "DepGraph") removes whole output channels of every
conv together with everything coupled to them: the BN after it, the depthwise conv that follows, the next
conv's input channels and the channels a residual sum ties together. Channels are ranked by the L2 norm of
their weights, per layer (``global_pruning=False``), so every layer keeps the same fraction: the network's
shape follows from the ratio alone, not from the weights, and the new head is never pruned.

A pruned model's ``state_dict`` is a plain state dict whose shapes differ from the dense network's;
:func:`adafilter_lib.core.model.shrink_to_state` resizes a freshly built dense network to those shapes, so ``best.pt`` stays a
tensors-only file (``torch.load(weights_only=True)``), unlike pickling the pruned module.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from ..core.engine import autocast_for
from ..core.errors import KitError


def _tp():
    try:
        import torch_pruning
    except ImportError:
        raise KitError(
            "structured pruning needs Torch-Pruning; run: pip install 'adafilter-kit[pruning]' (or pip install torch-pruning)"
        ) from None
    return torch_pruning


def _example(resolution: int, model: nn.Module) -> torch.Tensor:
    return torch.randn(1, 3, resolution, resolution, device=next(model.parameters()).device)


def channel_prune(model: nn.Module, ratio: float, resolution: int) -> None:
    """Remove ``ratio`` of the output channels of every prunable layer of ``model`` (a TransferModel), in place.

    The head (``model.head``) keeps its inputs' coupling but none of its outputs is removed. The model keeps its
    memory format (Torch-Pruning rebuilds weights as plain contiguous tensors; channels_last is restored).
    """
    tp = _tp()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    channels_last = first.weight.dim() == 4 and first.weight.is_contiguous(memory_format=torch.channels_last)
    pruner = tp.pruner.MagnitudePruner(
        model,
        _example(resolution, model),
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[model.head],
        output_transform=lambda out: out.logits,
    )
    pruner.step()
    if channels_last:
        model.to(memory_format=torch.channels_last)


def macs_and_params(model: nn.Module, resolution: int) -> tuple[float, int]:
    """Multiply-accumulates of one image at ``resolution`` and the parameter count (head included)."""
    was_training = model.training
    model.eval()
    macs, params = _tp().utils.count_ops_and_params(model, _example(resolution, model))
    model.train(was_training)
    return float(macs), int(params)


def ratio_for_macs(model: nn.Module, target: float, resolution: int, tolerance: float = 0.02) -> float:
    """The channel ratio whose pruned network needs ``target`` times fewer MACs than ``model`` (bisection on copies).

    Raises:
        KitError: ``target`` is not reachable with at most 95 % of every layer's channels removed.
    """
    dense, _ = macs_and_params(model, resolution)

    def reduction(ratio: float) -> float:
        pruned = copy.deepcopy(model)
        channel_prune(pruned, ratio, resolution)
        return dense / macs_and_params(pruned, resolution)[0]

    low, high = 0.0, 0.95
    if reduction(high) < target:
        raise KitError(
            f"{target}x fewer MACs is out of reach by channel pruning (at most {reduction(high):.1f}x); lower target_macs_ratio"
        )
    for _ in range(20):
        mid = (low + high) / 2
        got = reduction(mid)
        if abs(got / target - 1) <= tolerance:
            return mid
        low, high = (mid, high) if got < target else (low, mid)
    return (low + high) / 2


@torch.no_grad()
@torch.no_grad()
def latency_ratios(
    dense: nn.Module,
    pruned: nn.Module,
    resolution: int,
    channels_last: bool = True,
    amp: bool = True,
    batches=(1, 32),
    repeats: int = 20,
) -> dict[str, float]:
    """Dense ÷ pruned forward time (eval mode, no grad) per batch size: the median of ``repeats`` timings, the two
    models interleaved in one process (as the step-time bench does), after two warm-up passes each, with the
    run's memory format and autocast (as its evaluation).

    Returns:
        ``{"latency_ratio_b1": ..., "latency_ratio_b32": ...}`` (more than 1: the pruned model is faster),
        and ``latency_ms_dense_b<N>`` / ``latency_ms_pruned_b<N>``.
    """
    out = {}
    models = {"dense": dense.eval(), "pruned": pruned.eval()}
    device = next(dense.parameters()).device
    for batch in batches:
        images = torch.randn(batch, 3, resolution, resolution, device=device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        times = {name: [] for name in models}
        for repeat in range(repeats + 2):
            for name, model in models.items():
                start = time.perf_counter()
                with autocast_for(device, amp):
                    model(images)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if repeat >= 2:
                    times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(t) for name, t in times.items()}
        out[f"latency_ratio_b{batch}"] = medians["dense"] / medians["pruned"]
        out.update({f"latency_ms_{name}_b{batch}": 1000 * m for name, m in medians.items()})
    return out
