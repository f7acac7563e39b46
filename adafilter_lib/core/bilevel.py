"""Parameters that learn from held-out images: a first-order bilevel step beside the training step.

DARTS-style alternation (Liu, Simonyan, Yang; ICLR 2019, first-order variant): every training step, the
weights step on a training batch, then the held-out groups (AdaFilter's gate network with
``method.adafilter.gates_on_holdout``) step on a batch of the held-out part of the training split
(``data.holdout_fraction``). Neither pass lets the other's parameters move: the weight pass drops the
held-out groups' gradients, and the held-out pass computes no weight gradient at all. The validation split
stays untouched, for model selection.

The held-out pass runs in training mode, so batch norms normalize with its batch's statistics (as the weight
pass does) and their running statistics see held-out images too.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import world_size
from .errors import KitError


def endless(loader: Iterable) -> Iterator:
    """The loader's batches, again and again: each new pass reshuffles (and re-augments) with its own generator."""
    while True:
        yield from loader


@contextmanager
def frozen(params: list[nn.Parameter]):
    """``requires_grad`` off for ``params`` inside the block, so backward computes no gradient for them."""
    states = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, state in zip(params, states):
            p.requires_grad_(state)


class HeldOutStep:
    """The held-out pass of one training step.

    Args:
        optimizer: the run's optimizer; its param groups carry a ``"name"``.
        group_names: the groups that learn from held-out images only (``Method.holdout_groups``).
        loader: batches ``(images (B, 3, R, R), labels (B,))`` of the held-out images, drawn endlessly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, group_names: set[str], loader: Iterable):
        if world_size() > 1:
            # DDP syncs the gradients of one backward per step; a second pass per step is not wired for it.
            raise KitError("held-out gate steps (gates_on_holdout) do not run under DDP (torchrun) yet: train in one process")
        named = {g.get("name"): g for g in optimizer.param_groups}
        if not group_names <= set(named):
            raise KitError(f"no optimizer group named {sorted(group_names - set(named))} for the held-out step")
        self.held = [p for name in group_names for p in named[name]["params"]]
        self.weights = [p for g in optimizer.param_groups if g.get("name") not in group_names for p in g["params"]]
        self.batches = endless(loader)

    def drop_held_gradients(self) -> None:
        """After the weight pass's backward: the held-out groups learn nothing from training images."""
        for p in self.held:
            p.grad = None

    def step(self, model: nn.Module, method, optimizer: torch.optim.Optimizer, to_device, autocast) -> None:
        """One held-out batch: loss (plus the method's extra term), gradients for the held-out groups only, a step.

        ``to_device(images, labels)`` places a batch as the training loop does; ``autocast()`` is its autocast.
        """
        images, labels = to_device(*next(self.batches))
        optimizer.zero_grad(set_to_none=True)
        with frozen(self.weights):
            with autocast():
                output = model(images)
                loss = F.cross_entropy(output.logits.float(), labels)
                extra = method.extra_loss(model, output)
            (loss if extra is None else loss + extra).backward()
        optimizer.step()  # parameters without a gradient (every weight) are left as they are
