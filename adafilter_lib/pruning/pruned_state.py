"""What a pruned network holds: its zeros counted per layer and overall (sparsity, compression) and its
weights as a plain state dict with the zeros baked in (it loads into an unmasked model of the same kind).

Counts come from the actual zeros of the weights the network computes with (see :mod:`.masks`).
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from ..core.stages import stage_of
from .masks import effective_weight, prunable_layers


def sparsity_table(model: nn.Module) -> pd.DataFrame:
    """Per-layer sparsity from actual zero counts: ``layer, stage, weights, nonzero, sparsity, compression``."""
    rows = []
    for name, module in prunable_layers(model).items():
        weight = effective_weight(module)
        nonzero = int(torch.count_nonzero(weight))
        rows.append(
            {
                "layer": name,
                "stage": stage_of(name),
                "weights": weight.numel(),
                "nonzero": nonzero,
                "sparsity": 1.0 - nonzero / weight.numel(),
                "compression": weight.numel() / max(nonzero, 1),
            }
        )
    return pd.DataFrame(rows)


def compression_stats(model: nn.Module) -> dict:
    """Counts over the pruned network, from actual zeros.

    Returns:
        ``prunable_params`` (backbone conv/linear weights), ``nonzero_prunable``, ``sparsity`` and
        ``compression`` (= prunable / nonzero prunable) of those; ``total_params`` and
        ``nonzero_params`` over every parameter of the model (biases, BN and the head included).
    """
    table = sparsity_table(model)
    prunable, nonzero = int(table["weights"].sum()), int(table["nonzero"].sum())
    total = nonzero_all = 0
    for name, p in model.named_parameters():
        module_name, _, leaf = name.rpartition(".")
        value = effective_weight(model.get_submodule(module_name)) if leaf == "weight_orig" else p.detach()
        total += value.numel()
        nonzero_all += int(torch.count_nonzero(value))
    return {
        "prunable_params": prunable,
        "nonzero_prunable": nonzero,
        "sparsity": 1.0 - nonzero / max(prunable, 1),
        "compression": prunable / max(nonzero, 1),
        "total_params": total,
        "nonzero_params": nonzero_all,
    }


def export_pruned(model: nn.Module) -> dict[str, torch.Tensor]:
    """A plain state dict (``weight`` keys, zeros baked in) that loads into an unpruned model of the same kind."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("weight_mask"):
            continue
        if key.endswith("weight_orig"):
            module = model.get_submodule(key[: -len(".weight_orig")])
            key, value = key[: -len("_orig")], effective_weight(module)
        state[key] = value.detach().clone().contiguous()
    return state


def load_pruned(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an exported state into ``model``, with or without masks attached (masks become the zero pattern)."""
    if not any(k.endswith("weight_orig") for k in model.state_dict()):
        model.load_state_dict(state)
        return
    layers = {f"features.{n}.weight": m for n, m in prunable_layers(model).items()}
    plain = {}
    for key, value in state.items():
        if key in layers:
            plain[key[: -len("weight")] + "weight_orig"] = value
            plain[key[: -len("weight")] + "weight_mask"] = (value != 0).to(value.dtype)
        else:
            plain[key] = value
    model.load_state_dict(plain)
