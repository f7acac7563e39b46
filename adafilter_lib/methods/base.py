"""The baseline methods and the :class:`Method` base every method adjusts.

The training loop (:mod:`adafilter_lib.core.engine`) is the same for every method; a :class:`Method` only
decides how the model is prepared (which parameters train), the optimizer's parameter groups, the
train/eval mode of each part, and an optional extra loss term.

- ``finetune``: every parameter trains; backbone at ``optim.lr``, head at ``optim.head_lr``.
- ``linear_probe``: the backbone is frozen, BN statistics included; only the head trains.
- ``l2sp``: fine-tuning plus ``alpha/2 * ||w - w0||^2`` towards the pretrained backbone weights and
  ``beta/2 * ||w_head||^2`` (Li, Grandvalet, Davoine, ICML 2018).
- ``scratch``: the same network from random initialization, every group at ``optim.head_lr``
  (a random backbone needs the larger rate); the reference that shows what pretraining buys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol, Sequence

import torch
from torch import nn

from ..core.config import RunConfig
from ..core.model import ModelOutput, TransferModel


class Method:
    """Fine-tuning; the base every other method adjusts."""

    name = "finetune"
    uses_pretrained = True

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    def build_model(self, model: TransferModel) -> TransferModel:
        """Turn the pretrained TransferModel into this method's network (default: unchanged)."""
        return model

    def begin_epoch(self, model: TransferModel, epoch: int) -> None:
        """Called before training epoch ``epoch`` (0-based); schedules that change with the epoch live here."""

    def prepare(self, model: TransferModel) -> None:
        """Set ``requires_grad`` (and any reference state) before the optimizer is built."""
        model.requires_grad_(True)

    def param_groups(self, model: TransferModel) -> list[dict]:
        """Optimizer groups: backbone at ``optim.lr``, head at ``optim.head_lr`` (frozen params left out)."""
        return lr_groups({"backbone": (model.features, self.cfg.optim.lr), "head": (model.head, self.cfg.optim.head_lr)})

    def train_mode(self, model: TransferModel) -> None:
        """Put the model into training mode (methods that freeze BN statistics override this)."""
        model.train()

    def extra_loss(self, model: TransferModel, output: ModelOutput) -> Optional[torch.Tensor]:
        """A regularization term added to the cross-entropy, or None."""
        return None

    def finalize(self, model: TransferModel) -> None:
        """Change the trained model (best epoch's weights loaded) before the test split is measured.

        Default: nothing. A post-hoc method (e.g. weight interpolation) overrides this.
        """

    def holdout_groups(self) -> set[str]:
        """Names of the parameter groups that learn from the held-out training images only (``data.holdout_fraction``;
        ``core.bilevel``), or an empty set (the default: every group steps on training batches)."""
        return set()

    def eval_collector(self, num_classes: int, split: str) -> Optional["EvalCollector"]:
        """What this method records while ``split`` is evaluated (``"val"`` after every epoch, ``"test"`` once), or
        None (the default: nothing beyond loss and error). The training loop feeds it every batch, puts its
        ``fields()`` into the epoch's record or the summary (prefixed ``val_`` / ``test_``) and, for the test split,
        lets it ``save`` its files into the run directory."""
        return None


class EvalCollector(Protocol):
    """A method's per-batch evaluation statistics (AdaFilter: gate usage; see ``AdaFilter.eval_collector``)."""

    def __call__(self, output: ModelOutput, labels: torch.Tensor, losses: torch.Tensor) -> None:
        """One batch: the model output, labels (B,) and per-image losses (B,)."""

    def fields(self) -> dict:
        """JSON-ready numbers for the record (keys without the split prefix); {} when there is nothing to report."""

    def save(self, run_dir: Path, class_names: Sequence[str]) -> None:
        """Write the split's files into ``run_dir`` (test split only, main process)."""


class LinearProbe(Method):
    name = "linear_probe"

    def prepare(self, model: TransferModel) -> None:
        model.requires_grad_(False)
        model.head.requires_grad_(True)

    def train_mode(self, model: TransferModel) -> None:
        model.train()
        model.features.eval()  # frozen features: BN keeps its ImageNet statistics too


class L2SP(Method):
    name = "l2sp"

    def prepare(self, model: TransferModel) -> None:
        super().prepare(model)
        # The starting point w0, kept outside the module tree so it is never trained or checkpointed twice.
        self.reference = {name: p.detach().clone() for name, p in model.features.named_parameters()}

    def extra_loss(self, model: TransferModel, output: ModelOutput) -> torch.Tensor:
        alpha, beta = self.cfg.method.l2sp.alpha, self.cfg.method.l2sp.beta
        drift = sum(((p - self.reference[name].to(p.device)) ** 2).sum() for name, p in model.features.named_parameters())
        head = sum((p**2).sum() for p in model.head.parameters())
        return 0.5 * alpha * drift + 0.5 * beta * head


class Scratch(Method):
    name = "scratch"
    uses_pretrained = False

    def param_groups(self, model: TransferModel) -> list[dict]:
        lr = self.cfg.optim.head_lr
        return lr_groups({"backbone": (model.features, lr), "head": (model.head, lr)})


def lr_groups(parts: dict[str, tuple[nn.Module, float]]) -> list[dict]:
    """Optimizer parameter groups ``{"name", "params", "lr"}``, one per named part, of its trainable parameters
    (a part with none is left out)."""
    groups = []
    for name, (module, lr) in parts.items():
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            groups.append({"name": name, "params": params, "lr": lr})
    return groups
