"""Optimizers and learning-rate schedules from :class:`~adafilter_lib.core.config.OptimConfig`.

``build_optimizer`` takes a method's parameter groups (``methods.base.lr_groups``); a group may pick its
own update rule, and groups of different rules are stepped as one :class:`MixedOptimizer`, so the loop,
the schedule and the checkpoints always see one optimizer.
"""

from __future__ import annotations

import math

import torch

from .config import OptimConfig
from .errors import KitError


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over the method's parameter groups.

    A group may choose its own rule with an ``"optimizer"`` key (``"sgd"`` or ``"adamw"``; e.g.
    AdaFilter's ``method.adafilter.gate_optimizer``). Groups of different rules are stepped by one
    :class:`MixedOptimizer`, so the schedule, the checkpoints and the loop still see one optimizer.
    """
    by_rule: dict[str, list[dict]] = {}
    for group in groups:  # insertion order: the first group stays param_groups[0] (its lr is logged)
        rule = group.get("optimizer") or cfg.optimizer
        by_rule.setdefault(rule, []).append({k: v for k, v in group.items() if k != "optimizer"})
    optimizers = [_single_rule(rule, rule_groups, cfg) for rule, rule_groups in by_rule.items()]
    return optimizers[0] if len(optimizers) == 1 else MixedOptimizer(optimizers)


def _single_rule(rule: str, groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    # foreach: one multi-tensor kernel per group instead of a few small ops per parameter, which
    # matters on CPU for AdaFilter's ~200 small gate-network tensors.
    if rule == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
            foreach=True,
        )
    if rule == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    raise KitError(f"unknown optimizer '{rule}' for a parameter group: use 'sgd' or 'adamw'")


class MixedOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped as one (e.g. SGD for the network, AdamW for a gate network).

    Its ``param_groups`` are the inner optimizers' group dicts themselves, so an LR scheduler built on
    it sets every inner learning rate; ``state_dict`` holds one state per inner optimizer.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)
        super().__init__([group for opt in self.optimizers for group in opt.param_groups], defaults={})

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        states = state_dict.get("optimizers")
        if states is None or len(states) != len(self.optimizers):
            raise KitError(
                "the checkpoint's optimizer state does not match this run's optimizers "
                "(was optim.optimizer or a gate_optimizer changed?): resume with the original config"
            )
        for opt, state in zip(self.optimizers, states):
            opt.load_state_dict(state)
        # Optimizer.load_state_dict replaces the group dicts: share the new ones, or a scheduler would
        # keep setting learning rates on dicts no inner optimizer reads any more.
        self.param_groups = [group for opt in self.optimizers for group in opt.param_groups]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int):
    """A per-step schedule: cosine to zero over all steps, step decay every ``step_size`` epochs, or constant.

    A parameter group may carry ``"phases"``: ``[(first_epoch, stop_epoch, lr), ...]``. It then trains only in
    those epochs, at each phase's rate, with the schedule restarted over each phase's own steps, and rests at rate 0
    between and after them (LP-FT: the head at the probe's rate, then at the fine-tuning rate; the backbone only in
    the second phase).
    """
    total = max(1, cfg.epochs * steps_per_epoch)

    def shape(step: int, steps: int) -> float:
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
        if cfg.schedule == "step":
            return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
        return 1.0

    def phased(phases: list, base_lr: float):
        def factor(step: int) -> float:
            for first, stop, lr in phases:
                start, steps = first * steps_per_epoch, max(1, (stop - first) * steps_per_epoch)
                if start <= step < start + steps:
                    return lr / base_lr * shape(step - start, steps)
            return 0.0

        return factor

    factors = [
        phased(group["phases"], group["lr"]) if group.get("phases") else (lambda step: shape(step, total))
        for group in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
