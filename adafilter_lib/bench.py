"""Cost benchmark: AdaFilter versus fine-tuning on the same backbone, resolution and batch, in one process.

Training steps (forward, backward, optimizer step) and evaluation steps of the two models are timed
interleaved (A, B, A, B, ...) so that both see the same machine state; the medians and their ratios
are printed and written under ``results/bench/`` with the command that produced them. The FLOP bound
of the training-step ratio is about 5/3 (forward through both filter banks, input gradients through
both, weight gradients through one).
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .config import load_config
from .engine import autocast_for, build_optimizer
from .methods import build_method
from .model import build_transfer_model
from .runs import atomic_write_json


def _models(backbone: str, num_classes: int, device: torch.device, channels_last: bool):
    """A fine-tuning model and an AdaFilter model (random weights: timing does not depend on them)."""
    built = {}
    for name in ("finetune", "adafilter"):
        cfg = load_config(None, [f"method.name={name}", f"model.backbone={backbone}"])
        method = build_method(cfg)
        torch.manual_seed(0)
        model = method.build_model(build_transfer_model(backbone, num_classes, pretrained=False))
        model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        method.prepare(model)
        optimizer = build_optimizer(method.param_groups(model), cfg.optim)  # what training uses
        built[name] = (model, optimizer)
    return built


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(model, optimizer, x, y, device, amp) -> None:
    model.train()
    with autocast_for(device, amp):
        loss = F.cross_entropy(model(x).logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@torch.no_grad()
def _eval_step(model, x, device, amp) -> None:
    model.eval()
    with autocast_for(device, amp):
        model(x)


def run_bench(backbone: str, resolution: int, batch: int, steps: int = 10, warmup: int = 3, device: str = "auto",
              channels_last: bool = True, amp: bool = True, out_dir: Optional[str] = "results/bench",
              command: Optional[str] = None) -> dict:
    """Time training and evaluation steps of fine-tuning and AdaFilter; return medians (s) and ratios."""
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    models = _models(backbone, 10, dev, channels_last)
    x = torch.randn(batch, 3, resolution, resolution, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev)
    times = {f"{kind}_{name}": [] for kind in ("train", "eval") for name in models}
    for step in range(warmup + steps):
        for kind in ("train", "eval"):
            for name, (model, optimizer) in models.items():
                _sync(dev)
                start = time.perf_counter()
                _train_step(model, optimizer, x, y, dev, amp) if kind == "train" else _eval_step(model, x, dev, amp)
                _sync(dev)
                if step >= warmup:
                    times[f"{kind}_{name}"].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "backbone": backbone, "resolution": resolution, "batch": batch, "steps": steps, "warmup": warmup,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "channels_last": channels_last, "amp": amp and dev.type == "cuda", "torch": torch.__version__,
        **{f"{k}_median_s": v for k, v in med.items()},
        "train_step_ratio": med["train_adafilter"] / med["train_finetune"],
        "eval_step_ratio": med["eval_adafilter"] / med["eval_finetune"],
        "command": command,
    }
    if out_dir is not None:
        tag = "cuda" if dev.type == "cuda" else "cpu"
        atomic_write_json(Path(out_dir) / f"{backbone}_{resolution}px_b{batch}_{tag}.json", result)
    return result


def format_bench(result: dict) -> str:
    """Human-readable lines; the last one is ``train_step_ratio=<x> eval_step_ratio=<y>``."""
    ms = lambda key: f"{1000 * result[key]:.1f} ms"
    return "\n".join([
        f"{result['backbone']} {result['resolution']}px batch {result['batch']} on {result['device']} "
        f"(median of {result['steps']} interleaved steps)",
        f"  train step: finetune {ms('train_finetune_median_s')}, adafilter {ms('train_adafilter_median_s')}",
        f"  eval step:  finetune {ms('eval_finetune_median_s')}, adafilter {ms('eval_adafilter_median_s')}",
        f"train_step_ratio={result['train_step_ratio']:.3f} eval_step_ratio={result['eval_step_ratio']:.3f}",
    ])
