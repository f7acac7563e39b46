"""AdaFilter compaction: keep only the fine-tuned filters a task actually selects.

After AdaFilter training, each fine-tuned filter has a selection frequency: the fraction of
validation images (never test images) for which its gate chose the fine-tuned copy. Filters whose
frequency is below a threshold are dropped: their fine-tuned weights (and BN) are overwritten with the
pretrained ones, so both paths compute the same channel and the gate's choice no longer matters, which
is exactly "the gate is forced to the pretrained filter". A task then needs to store only the kept
fine-tuned filters (:func:`compact_state`) next to the shared pretrained backbone.

Extra parameters per task (:func:`extra_params`) count what a task stores beyond the shared backbone:
kept fine-tuned filters (weights, bias, their BN affine), the gate network (its per-filter head rows
only for kept filters: dropped ones get a constant "pretrained" logit), and the backbone layers that
are not gated but were fine-tuned (e.g. the stem). The new head is reported apart
(``head_params``): every method needs one. BN running statistics are buffers and not counted.
At threshold 0 nothing is dropped and the network is unchanged.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..adafilter.gates import GateStats
from ..adafilter.layers import GatedConv2d
from ..adafilter.network import AdaFilterModel
from ..core.engine import evaluate
from ..core.errors import KitError
from ..training.finished import load_finished_run
from ..training.setup import eval_loader

DEFAULT_THRESHOLDS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.01)
GATE_OFF_LOGIT = -1e4  # sigmoid(-1e4) == 0: the gate of a dropped filter always says "pretrained"


@torch.no_grad()
def selection_frequency(
    model: AdaFilterModel, loader, device: torch.device, num_classes: int, amp: bool = True, channels_last: bool = True
) -> dict[str, np.ndarray]:
    """{layer: (C_out,) fraction of images for which each filter chose its fine-tuned copy} (eval mode)."""
    stats = GateStats(num_classes)
    evaluate(model, loader, device, amp, channels_last, on_batch=stats)
    summary = stats.compute()
    if summary is None:
        raise KitError("compaction needs a gated model (method adafilter or one of its learned-gate variants)")
    return summary.filter_frequency


def keep_masks(frequency: dict[str, np.ndarray], threshold: float) -> dict[str, np.ndarray]:
    """{layer: (C_out,) bool}: filters whose selection frequency is at least ``threshold``."""
    return {name: np.asarray(f) >= threshold for name, f in frequency.items()}


def _bn_tensors(layer: GatedConv2d) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Matching (fine-tuned, pretrained) per-channel BN tensors of a gated-BN layer."""
    if not layer.gated_bn:
        return [], []
    keys = ("weight", "bias", "running_mean", "running_var")
    return [getattr(layer.bn_finetuned, k) for k in keys], [getattr(layer.bn_pretrained, k) for k in keys]


@torch.no_grad()
def force_pretrained(layer: GatedConv2d, dropped: torch.Tensor) -> None:
    """Make the fine-tuned path of channels ``dropped`` (bool, (C_out,)) compute the pretrained path exactly."""
    idx = dropped.nonzero().flatten().to(layer.weight_finetuned.device)
    layer.weight_finetuned[idx] = layer.weight_pretrained[idx]
    if layer.bias_finetuned is not None:
        layer.bias_finetuned[idx] = layer.bias_pretrained[idx]
    for ft, pre in zip(*_bn_tensors(layer)):
        ft[idx] = pre[idx]
    # Without gated BN one BN follows the mix; equal conv outputs already give equal channels.


@torch.no_grad()
def force_gates_off(model: AdaFilterModel, index: int, dropped: torch.Tensor) -> None:
    """Set the gate-head rows of filters ``dropped`` of gated layer ``index`` to a constant "pretrained" logit.

    Their choice no longer matters (see :func:`force_pretrained`); a constant row needs no storage and
    makes the returned gates (and gate statistics) say "pretrained" for them.
    """
    head = model.gate_net.heads[index]
    idx = dropped.nonzero().flatten().to(head.weight.device)
    head.weight[idx] = 0.0
    head.bias[idx] = GATE_OFF_LOGIT


def compact(model: AdaFilterModel, keep: dict[str, np.ndarray]) -> AdaFilterModel:
    """Drop the fine-tuned filters not in ``keep`` (in place); returns ``model``."""
    for index, (name, layer) in enumerate(model.gated_layers().items()):
        dropped = ~torch.as_tensor(keep[name])
        force_pretrained(layer, dropped)
        force_gates_off(model, index, dropped)
    return model


def _ungated_state(model: AdaFilterModel) -> dict[str, torch.Tensor]:
    """Fine-tuned backbone tensors outside the gated layers (stem, ungated convs and BNs), by name."""
    gated = {f"{n}." for n, m in model.features.named_modules() if isinstance(m, GatedConv2d)}
    return {k: v for k, v in model.features.state_dict().items() if not any(k.startswith(g) for g in gated)}


def compact_state(model: AdaFilterModel, keep: dict[str, np.ndarray]) -> dict:
    """What one task stores: the kept fine-tuned filters and BN entries, BN statistics, gate net, head, ungated layers."""
    layers = {}
    for i, (name, layer) in enumerate(model.gated_layers().items()):
        idx = torch.as_tensor(keep[name]).nonzero().flatten()
        gate_head = model.gate_net.heads[i]
        entry = {
            "index": idx,
            "weight": layer.weight_finetuned.detach()[idx].clone(),
            "gate_weight": gate_head.weight.detach()[idx].clone(),
            "gate_bias": gate_head.bias.detach()[idx].clone(),
        }
        if layer.bias_finetuned is not None:
            entry["bias"] = layer.bias_finetuned.detach()[idx].clone()
        if layer.bn_finetuned is not None:
            bn = layer.bn_finetuned.state_dict()
            entry["bn_finetuned"] = {k: v[idx].clone() if layer.gated_bn and v.dim() else v.clone() for k, v in bn.items()}
        if layer.bn_pretrained is not None:  # target-adapted statistics ("stats" mode) are task-specific buffers
            entry["bn_pretrained"] = {k: v.clone() for k, v in layer.bn_pretrained.state_dict().items()}
        layers[name] = entry
    # The gate network's projections and LSTM carry the recurrence through every layer; its heads only kept rows.
    gate_net = {k: v.clone() for k, v in model.gate_net.state_dict().items() if not k.startswith("heads.")}
    return {
        "layers": layers,
        "gate_net": gate_net,
        "head": copy.deepcopy(model.head.state_dict()),
        "ungated": copy.deepcopy(_ungated_state(model)),
    }


@torch.no_grad()
def load_compact_state(model: AdaFilterModel, state: dict) -> AdaFilterModel:
    """Restore a task into ``model``, an AdaFilter model freshly built from the pretrained backbone."""
    model.gate_net.load_state_dict({**model.gate_net.state_dict(), **state["gate_net"]})
    model.head.load_state_dict(state["head"])
    model.features.load_state_dict({**model.features.state_dict(), **state["ungated"]})
    for i, (name, layer) in enumerate(model.gated_layers().items()):
        entry = state["layers"][name]
        idx = entry["index"].to(layer.weight_finetuned.device)
        force_gates_off(model, i, torch.ones(layer.out_channels, dtype=torch.bool))
        model.gate_net.heads[i].weight[idx] = entry["gate_weight"].to(model.gate_net.heads[i].weight)
        model.gate_net.heads[i].bias[idx] = entry["gate_bias"].to(model.gate_net.heads[i].bias)
        if "bn_pretrained" in entry:
            layer.bn_pretrained.load_state_dict(entry["bn_pretrained"])
        force_pretrained(layer, torch.ones(layer.out_channels, dtype=torch.bool))  # start from the pretrained filters
        layer.weight_finetuned[idx] = entry["weight"].to(layer.weight_finetuned)
        if "bias" in entry:
            layer.bias_finetuned[idx] = entry["bias"].to(layer.bias_finetuned)
        if "bn_finetuned" in entry:
            for key, value in layer.bn_finetuned.state_dict().items():
                stored = entry["bn_finetuned"][key].to(value.device)
                if layer.gated_bn and value.dim():
                    value[idx] = stored
                else:
                    value.copy_(stored)
    return model


def extra_params(model: AdaFilterModel, keep: dict[str, np.ndarray]) -> dict:
    """Parameter counts of one task beyond the shared backbone, and the backbone's size.

    Returns:
        ``backbone_params``, ``filter_params`` (kept fine-tuned weights + bias + their BN affine),
        ``gate_net_params`` (projections, LSTM, and the gate-head rows of kept filters), ``ungated_params``, ``extra_params`` (their sum), ``extra_params_frac``
        (= extra / backbone), ``head_params`` (not in extra), ``kept_filters``, ``filters``.
    """
    backbone = filters = kept_filters = total_filters = 0
    for name, layer in model.gated_layers().items():
        per_filter = layer.weight_pretrained[0].numel() + (1 if layer.bias_pretrained is not None else 0)
        bn_affine = 2 if layer.bn_finetuned is not None and layer.bn_finetuned.affine else 0
        kept = int(np.sum(keep[name]))
        backbone += layer.out_channels * (per_filter + bn_affine)
        # Without gated BN the single BN after mixing is task-specific as a whole.
        filters += kept * per_filter + (kept if layer.gated_bn else layer.out_channels) * bn_affine
        kept_filters, total_filters = kept_filters + kept, total_filters + layer.out_channels
    gated_ids = {id(p) for layer in model.gated_layers().values() for p in layer.parameters()}
    gated_ids |= {id(p) for layer in model.gated_layers().values() for p in layer.buffers()}
    ungated = sum(p.numel() for p in model.features.parameters() if id(p) not in gated_ids)
    backbone += ungated
    heads = model.gate_net.heads
    gate_net = sum(p.numel() for n, p in model.gate_net.named_parameters() if not n.startswith("heads."))
    gate_net += sum(int(np.sum(keep[name])) * (heads[i].in_features + 1) for i, name in enumerate(model.gated_layers()))
    extra = filters + gate_net + ungated
    return {
        "backbone_params": backbone,
        "filter_params": filters,
        "gate_net_params": gate_net,
        "ungated_params": ungated,
        "extra_params": extra,
        "extra_params_frac": extra / backbone,
        "head_params": sum(p.numel() for p in model.head.parameters()),
        "kept_filters": kept_filters,
        "filters": total_filters,
    }


def compaction_sweep(
    run_dir: str | Path, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, progress: bool = True
) -> pd.DataFrame:
    """Compact a finished AdaFilter run at each threshold and measure validation and test error.

    Selection frequencies come from the validation split; the test split is only measured.

    Args:
        run_dir: a finished run of ``adafilter`` (or a learned-gate variant) with ``best.pt``.
        thresholds: drop fine-tuned filters selected for fewer than this fraction of validation images.
    Returns:
        One row per threshold: ``threshold, extra_params_frac, top1_err, val_top1_err, top1_err_change``
        (vs. threshold 0, i.e. the uncompacted model) and the counts of :func:`extra_params`.
    """
    bad = [t for t in thresholds if not 0.0 <= t <= 1.01]
    if bad:  # a frequency lies in [0, 1]; 1.01 drops every fine-tuned filter
        raise KitError(f"compaction thresholds must lie in [0, 1.01] (selection frequencies), got {bad[0]}")
    run = load_finished_run(run_dir, hint="train an adafilter run first")
    cfg, splits, model, device = run.cfg, run.splits, run.model, run.device
    if not isinstance(model, AdaFilterModel):
        raise KitError(f"'{run_dir}' is a {cfg.method.name} run; compaction needs an adafilter run")
    args = (device, cfg.amp, cfg.channels_last)
    frequency = selection_frequency(model, eval_loader(splits.val, cfg), device, len(splits.classes), cfg.amp, cfg.channels_last)
    rows = []
    for threshold in sorted(thresholds):
        keep = keep_masks(frequency, threshold)
        compacted = compact(copy.deepcopy(model), keep)
        val = evaluate(compacted, eval_loader(splits.val, cfg), *args)
        test = evaluate(compacted, eval_loader(splits.test, cfg), *args)
        rows.append(
            {
                "threshold": threshold,
                **extra_params(compacted, keep),
                "top1_err": test["top1_err"],
                "val_top1_err": val["top1_err"],
            }
        )
        if progress:
            print(
                f"[{run.run_dir.name}] threshold {threshold:g}: extra params {100 * rows[-1]['extra_params_frac']:.1f}% of the "
                f"backbone, test err {test['top1_err']:.2f}%",
                flush=True,
            )
    table = pd.DataFrame(rows)
    reference = table.loc[table["threshold"] == 0, "top1_err"]
    base = reference.iloc[0] if len(reference) else evaluate(model, eval_loader(splits.test, cfg), *args)["top1_err"]
    table["top1_err_change"] = table["top1_err"] - base
    first = ["threshold", "extra_params_frac", "top1_err", "val_top1_err", "top1_err_change"]
    return table[first + [c for c in table.columns if c not in first]]
