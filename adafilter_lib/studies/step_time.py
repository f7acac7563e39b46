"""Cost benchmark: AdaFilter versus fine-tuning on the same backbone, resolution and batch, in one process.

Training steps (forward, backward, optimizer step) and evaluation steps of the two models are timed
interleaved (A, B, A, B, ...) so that both see the same machine state; the medians and their ratios
are printed and written under ``results/bench/`` with the command that produced them. The FLOP bound
of the training-step ratio is about 5/3 (forward through both filter banks, input gradients through
both, weight gradients through one). ``also`` adds more methods (e.g. the ablation
``adafilter_all_finetuned``: both banks, gated BN and the mix without the gate network) to the same
interleaving, each with its ratio to fine-tuning, to show where AdaFilter's extra time goes. AdaFilter's
evaluation step folds both BNs of every gated layer into one conv (:mod:`adafilter_lib.adafilter.layers`);
the same model evaluated unfolded is timed beside it (``eval_step_ratio_unfolded``), so the comparison
with earlier records stays fair.
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..adafilter.layers import GatedConv2d
from ..core.config import load_config
from ..core.engine import autocast_for
from ..core.errors import KitError
from ..core.files import atomic_write_json
from ..core.model import build_transfer_model
from ..core.optim import build_optimizer
from ..methods import build_method


def _models(
    backbone: str,
    num_classes: int,
    device: torch.device,
    channels_last: bool,
    also: Sequence[str] = (),
    overrides: Sequence[str] = (),
):
    """Fine-tuning, AdaFilter and the ``also`` methods' models (random weights: timing does not depend on them).

    ``overrides`` (``key=value``, e.g. ``method.adafilter.bn_pretrained=frozen``) apply to every model.
    """
    built = {}
    for name in dict.fromkeys(("finetune", "adafilter", *also)):
        cfg = load_config(None, [f"method.name={name}", f"model.backbone={backbone}", *overrides])
        method = build_method(cfg)
        torch.manual_seed(0)
        model = method.build_model(build_transfer_model(backbone, num_classes, pretrained=False))
        model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        method.prepare(model)
        optimizer = build_optimizer(method.param_groups(model), cfg.optim)  # what training uses
        built[name] = (model, optimizer)
    return built


def _cpu_name() -> str:
    """The CPU model (ratios depend on it: the kit measured 1.80 and 2.33 for the same command on two 2-core CPUs)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def run_bench(
    backbone: str,
    resolution: int,
    batch: int,
    steps: int = 10,
    warmup: int = 3,
    device: str = "auto",
    channels_last: bool = True,
    amp: bool = True,
    out_dir: Optional[str] = "results/bench",
    command: Optional[str] = None,
    also: Sequence[str] = (),
    overrides: Sequence[str] = (),
) -> dict:
    """Time training and evaluation steps of fine-tuning, AdaFilter and ``also``; return medians (s) and ratios.

    Ratios are AdaFilter's over fine-tuning's (``train_step_ratio``, ``eval_step_ratio``) and, for each
    method ``m`` of ``also``, ``train_step_ratio_<m>`` and ``eval_step_ratio_<m>``.
    """
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    models = _models(backbone, 10, dev, channels_last, also, overrides)
    unfolded = copy.deepcopy(models["adafilter"][0])
    for layer in unfolded.modules():
        if isinstance(layer, GatedConv2d):
            layer.fold_eval_bn = False
    eval_only = {"adafilter_unfolded": unfolded}
    x = torch.randn(batch, 3, resolution, resolution, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev)
    times = {f"{kind}_{name}": [] for kind in ("train", "eval") for name in models}
    times["eval_adafilter_unfolded"] = []
    for step in range(warmup + steps):
        for kind in ("train", "eval"):
            timed = models if kind == "train" else {**models, **{name: (m, None) for name, m in eval_only.items()}}
            for name, (model, optimizer) in timed.items():
                _sync(dev)
                start = time.perf_counter()
                _train_step(model, optimizer, x, y, dev, amp) if kind == "train" else _eval_step(model, x, dev, amp)
                _sync(dev)
                if step >= warmup:
                    times[f"{kind}_{name}"].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    extra_methods = [name for name in models if name not in ("finetune", "adafilter")]
    result = {
        "backbone": backbone,
        "resolution": resolution,
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads, {_cpu_name()})",
        "channels_last": channels_last,
        "amp": amp and dev.type == "cuda",
        "torch": torch.__version__,
        **{f"{k}_median_s": v for k, v in med.items()},
        "train_step_ratio": med["train_adafilter"] / med["train_finetune"],
        "eval_step_ratio": med["eval_adafilter"] / med["eval_finetune"],
        "eval_step_ratio_unfolded": med["eval_adafilter_unfolded"] / med["eval_finetune"],
        **{
            f"{kind}_step_ratio_{name}": med[f"{kind}_{name}"] / med[f"{kind}_finetune"]
            for name in extra_methods
            for kind in ("train", "eval")
        },
        "also": extra_methods,
        "set": list(overrides),
        "command": command,
    }
    if out_dir is not None:
        tag = "cuda" if dev.type == "cuda" else "cpu"
        # settings in the name, so that a --set run does not overwrite the record of the defaults
        extra = "".join(f"_{name}" for name in result["also"]) + "".join(
            "_" + item.rsplit(".", 1)[-1].replace("=", "-") for item in overrides
        )
        atomic_write_json(Path(out_dir) / f"{backbone}_{resolution}px_b{batch}_{tag}{extra}.json", result)
    return result


def format_bench(result: dict) -> str:
    """Human-readable lines; the last one is ``train_step_ratio=<x> eval_step_ratio=<y>``."""
    ms = lambda key: f"{1000 * result[key]:.1f} ms"
    return "\n".join(
        [
            f"{result['backbone']} {result['resolution']}px batch {result['batch']} on {result['device']} "
            f"(median of {result['steps']} interleaved steps)",
            f"  train step: finetune {ms('train_finetune_median_s')}, adafilter {ms('train_adafilter_median_s')}",
            f"  eval step:  finetune {ms('eval_finetune_median_s')}, adafilter {ms('eval_adafilter_median_s')} "
            f"(BN folded; unfolded {ms('eval_adafilter_unfolded_median_s')}, "
            f"{result['eval_step_ratio_unfolded']:.3f}x)",
            *(
                f"  {name}: train step {ms(f'train_{name}_median_s')} ({result[f'train_step_ratio_{name}']:.3f}x), "
                f"eval step {ms(f'eval_{name}_median_s')} ({result[f'eval_step_ratio_{name}']:.3f}x)"
                for name in result.get("also", [])
            ),
            f"train_step_ratio={result['train_step_ratio']:.3f} eval_step_ratio={result['eval_step_ratio']:.3f}",
        ]
    )


def bench_table(records_dir: str | Path = "results/bench") -> str:
    """A markdown table of every record in ``records_dir`` (one row per JSON file, sorted by name).

    Columns: the command, the CPU or GPU, the fine-tuning and AdaFilter training-step medians, both
    ratios, the evaluation ratio with AdaFilter's BNs unfolded (records before folding have none: their
    ``eval ratio`` is unfolded), and the training ratio of each ``--also`` method. Raises KitError if there is no record.
    """
    paths = sorted(Path(records_dir).glob("*.json"))
    if not paths:
        raise KitError(f"no bench records (*.json) in {records_dir}; run `python -m adafilter_lib bench` first")
    records = [json.loads(path.read_text()) for path in paths]
    also = list(dict.fromkeys(name for record in records for name in record.get("also", [])))
    header = ["command", "device", "fine-tuning step", "AdaFilter step", "train ratio", "eval ratio", "eval ratio unfolded"] + [
        f"`{name}` train ratio" for name in also
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record in records:
        command = (record.get("command") or "").replace("python -m adafilter_lib ", "")
        cells = [
            f"`{command}`",
            record["device"],
            f"{1000 * record['train_finetune_median_s']:.0f} ms",
            f"{1000 * record['train_adafilter_median_s']:.0f} ms",
            f"{record['train_step_ratio']:.2f}",
            f"{record['eval_step_ratio']:.2f}",
            f"{record['eval_step_ratio_unfolded']:.2f}" if "eval_step_ratio_unfolded" in record else "",  # older records: no fold
        ]
        cells += [f"{record[f'train_step_ratio_{name}']:.2f}" if f"train_step_ratio_{name}" in record else "" for name in also]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
