"""The one training loop every method shares: ``train_one_epoch`` and ``evaluate`` (plain functions).

:func:`adafilter_lib.training.trainer.fit` wraps them with run directories, checkpoints and resume.
Losses and errors are accumulated on the device and read once per epoch (plus once every
``log_every`` batches for the progress bar), so the loop does not stall a GPU with per-batch syncs.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .bilevel import HeldOutStep
from .distributed import all_reduce_sum, is_main, world_size
from .errors import RunFailed
from .model import ModelOutput

BatchHook = Callable[[ModelOutput, torch.Tensor, torch.Tensor], None]


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp`` is on; nothing on CPU (CPU autocast is slower for convs)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def train_one_epoch(
    model: nn.Module,
    method,
    loader: Iterable,
    optimizer,
    scheduler,
    device: torch.device,
    epoch: int,
    amp: bool = True,
    channels_last: bool = True,
    progress: bool = True,
    log_every: int = 10,
    on_batch: Optional[BatchHook] = None,
    holdout: Optional[Iterable] = None,
) -> dict:
    """One pass over ``loader``; returns mean ``loss``, ``top1_err`` (%), ``lr`` (the mean rate of the epoch's steps)
    and ``seconds``.

    With ``holdout`` (a loader of held-out training images) and a method whose ``holdout_groups()`` names
    parameter groups, those groups step on held-out batches only, after every training step (``core.bilevel``).

    Raises:
        RunFailed: when the loss becomes NaN or infinite, or diverges (with the epoch and the fix).
    """
    method.train_mode(model)
    start = time.perf_counter()
    totals = torch.zeros(3, device=device)  # loss sum, wrong count, sample count
    lrs = []  # the rate each step used (read before the scheduler moves it on)
    held_groups = method.holdout_groups() if holdout is not None else set()
    held_step = HeldOutStep(optimizer, held_groups, holdout) if held_groups else None
    bar = tqdm(loader, desc=f"epoch {epoch + 1} train", leave=False, disable=not (progress and is_main()))
    for step, (images, labels) in enumerate(bar):
        images, labels = _to_device(images, labels, device, channels_last)
        with autocast_for(device, amp):
            output = model(images)
            loss = F.cross_entropy(output.logits.float(), labels)
            extra = method.extra_loss(_unwrap(model), output)
            total_loss = loss if extra is None else loss + extra
        optimizer.zero_grad(set_to_none=True)
        total_loss.backward()
        lrs.append(optimizer.param_groups[0]["lr"])
        if held_step is not None:
            held_step.drop_held_gradients()
        optimizer.step()
        if held_step is not None:
            held_step.step(
                model, method, optimizer, lambda x, y: _to_device(x, y, device, channels_last), lambda: autocast_for(device, amp)
            )
        scheduler.step()
        with torch.no_grad():
            totals += torch.stack(
                [loss.detach() * len(labels), (output.logits.argmax(1) != labels).sum(), torch.tensor(len(labels), device=device)]
            ).float()
        if on_batch is not None:
            on_batch(output, labels, loss.detach())
        if (step + 1) % log_every == 0:
            _check_finite(totals[0], epoch)  # one sync every log_every steps
            bar.set_postfix(loss=f"{(totals[0] / totals[2]).item():.3f}")
    totals = all_reduce_sum(totals)
    _check_finite(totals[0], epoch)
    count = max(totals[2].item(), 1.0)
    _check_not_diverged(totals[0].item() / count, output.logits.shape[1], epoch)
    return {
        "loss": totals[0].item() / count,
        "top1_err": 100.0 * totals[1].item() / count,
        "lr": sum(lrs) / max(len(lrs), 1),  # the mean rate of the epoch's steps (first group: the backbone)
        "seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, method, loader: Iterable, device: torch.device, amp: bool = True, channels_last: bool = True
) -> None:
    """Recompute the running statistics of every BN the method trains, with the current weights ("precise BN").

    With few images and few steps per epoch, the exponential running averages lag far behind weights
    that move fast, and the evaluation-mode network differs from the one that was trained (validation
    error near chance while training error is low). A pass over the training data with a cumulative
    average (``momentum=None``) fixes that at the cost of one forward pass. BNs that the method keeps
    in evaluation mode (a linear probe's frozen backbone) are left untouched.
    """
    method.train_mode(model)
    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the pass
    for images, labels in loader:
        images, labels = _to_device(images, labels, device, channels_last)
        with autocast_for(device, amp):
            model(images)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
        for stat in (m.running_mean, m.running_var):  # every process ends with the same statistics
            stat.copy_(all_reduce_sum(stat) / world_size())


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    amp: bool = True,
    channels_last: bool = True,
    progress: bool = False,
    desc: str = "eval",
    on_batch: Optional[BatchHook] = None,
    reduce: bool = True,
) -> dict:
    """Mean cross-entropy ``loss`` and ``top1_err`` (%) over ``loader`` in eval mode (summed over processes).

    ``on_batch(output, labels, per_sample_loss)`` sees every batch in loader order, which is how gate
    collectors and per-image records are fed.
    """
    model.eval()
    totals = torch.zeros(3, device=device)
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not (progress and is_main())):
        images, labels = _to_device(images, labels, device, channels_last)
        with autocast_for(device, amp):
            output = model(images)
        losses = F.cross_entropy(output.logits.float(), labels, reduction="none")  # (B,)
        totals += torch.stack(
            [losses.sum(), (output.logits.argmax(1) != labels).sum(), torch.tensor(len(labels), device=device)]
        ).float()
        if on_batch is not None:
            on_batch(output, labels, losses)
    if reduce:
        totals = all_reduce_sum(totals)
    count = max(totals[2].item(), 1.0)
    return {"loss": totals[0].item() / count, "top1_err": 100.0 * totals[1].item() / count, "n": int(totals[2].item())}


def _check_finite(loss_sum: torch.Tensor, epoch: int) -> None:
    if not torch.isfinite(loss_sum).item():
        raise RunFailed(
            f"training loss became NaN/inf in epoch {epoch + 1}; lower optim.lr / optim.head_lr "
            "or check the data for invalid values"
        )


def check_epoch(model: nn.Module, val: dict, epoch: int) -> None:
    """Stop a run whose epoch ended with a validation loss or a weight that is not finite (one sync per epoch).

    Args:
        model: the trained model; every floating tensor of its ``state_dict`` (weights and BN statistics) is checked.
        val: :func:`evaluate`'s result on the validation split.
        epoch: 0-based, for the message.

    Raises:
        RunFailed: naming what is not finite and the likely fix.
    """
    if not math.isfinite(val["loss"]):
        raise RunFailed(f"validation loss is {val['loss']} after epoch {epoch + 1}; lower optim.lr / optim.head_lr")
    tensors = [t for t in model.state_dict().values() if torch.is_floating_point(t)]
    finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all() if tensors else torch.tensor(True)
    if not finite.item():
        bad = sum(1 for t in tensors if not torch.isfinite(t).all())
        raise RunFailed(f"{bad} weight tensor(s) hold NaN/inf after epoch {epoch + 1}; lower optim.lr / optim.head_lr")


def check_selected(val: dict, test_loss: float, num_classes: int, chance_factor: float) -> None:
    """Refuse to publish a model whose selected epoch is no better than a confident guess.

    Chance level is ln(K) for the loss (uniform outputs) and 100 (1 - 1/K) % for the error. A run fails when its
    chosen epoch's validation loss is over ``chance_factor`` x ln(K) (``optim.chance_loss_factor``, 3 by default)
    **and** its validation error is not clearly below chance (a one-sided binomial test at 1 %): outputs that
    are confidently wrong and no better than a guess, a blow-up that stayed finite (``optim.lr=1e6`` gave
    13-166 against ln(10) = 2.3). The loss alone does not decide: a linear probe of Lite0 on the 8x8 digits
    chose an epoch at 45 % validation error (chance: 90 %) with a loss of 14.3, over-confident but learning.

    Args:
        val: the chosen epoch's validation result: ``val_loss``, ``val_top1_err`` (%) and ``num_val`` (images).

    Raises:
        RunFailed: the test loss is not finite, or the chosen epoch fails the rule above (``chance_factor`` 0: no rule).
    """
    if not math.isfinite(test_loss):
        raise RunFailed(f"test loss is {test_loss}; lower optim.lr / optim.head_lr")
    chance = math.log(max(num_classes, 2))
    if (
        not chance_factor
        or val["val_loss"] <= chance_factor * chance
        or below_chance(val["val_top1_err"], val["num_val"], num_classes)
    ):
        return
    raise RunFailed(
        f"the chosen epoch's validation loss {val['val_loss']:.3g} is over {chance_factor:g}x the chance level ln({num_classes}) "
        f"= {chance:.2f} (optim.chance_loss_factor) and its validation error {val['val_top1_err']:.1f} % is no better "
        f"than chance: the model did not learn; lower optim.lr / optim.head_lr"
    )


def below_chance(top1_err: float, n: int, num_classes: int, alpha: float = 0.01) -> bool:
    """Whether ``top1_err`` % wrong of ``n`` images is clearly below chance, 1 - 1/K: the one-sided binomial
    probability of so few errors from a guess is under ``alpha``."""
    from scipy.stats import binom

    wrong = round(top1_err * n / 100.0)
    return n > 0 and binom.cdf(wrong, n, 1.0 - 1.0 / max(num_classes, 2)) < alpha


DIVERGED_FACTOR = 100.0  # a mean training loss this many times chance level's ln(K) means the run blew up


def _check_not_diverged(mean_loss: float, num_classes: int, epoch: int) -> None:
    """A finite blow-up (say 1e10 with ``optim.lr=1e6``) stops the run like a NaN instead of being published.

    Chance-level cross-entropy is ln(K); a mean far above it means the outputs are confidently wrong
    everywhere, which no learning run reaches (random-gate runs that went astray peaked near 3 ln(K); a wild
    tiny random-init test run near 33 ln(K)).
    """
    limit = DIVERGED_FACTOR * math.log(max(num_classes, 2))
    if mean_loss > limit:
        raise RunFailed(
            f"training diverged in epoch {epoch + 1}: mean loss {mean_loss:.3g} is over {DIVERGED_FACTOR:g}x "
            f"the chance level ln({num_classes}) = {math.log(max(num_classes, 2)):.2f}; lower optim.lr / optim.head_lr"
        )


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (methods look at named submodules)."""
    return model.module if hasattr(model, "module") else model
