"""Registry entries for ``fine_pruning``, ``prune_after_finetune``, ``gradual_magnitude`` and ``channel_pruning``.

Each runs its own schedule (rounds of Bayesian-optimized pruning trials; dense, prune, masked; a cubic
sparsity ramp) in :mod:`adafilter_lib.pruning.runner`, started by ``python -m adafilter_lib prune``. They are listed here
so that names, configs and tables treat them like every other method; the one-epoch-at-a-time loop
of :func:`adafilter_lib.training.trainer.fit` cannot run them and stops with a one-line pointer to the command.
"""

from __future__ import annotations

from ..core.errors import KitError
from ..core.model import TransferModel
from .base import Method


class _PruningMethod(Method):
    def build_model(self, model: TransferModel) -> TransferModel:
        raise KitError(
            f"method '{self.name}' runs its own pruning schedule; run it with "
            f"`python -m adafilter_lib prune --method {self.name} ...` (or adafilter_lib.pruning.runner.run_pruning)"
        )


class FinePruning(_PruningMethod):
    name = "fine_pruning"


class PruneAfterFinetune(_PruningMethod):
    name = "prune_after_finetune"


class GradualMagnitude(_PruningMethod):
    name = "gradual_magnitude"


class ChannelPruning(_PruningMethod):
    name = "channel_pruning"


PRUNING_METHODS = (FinePruning, PruneAfterFinetune, GradualMagnitude, ChannelPruning)
