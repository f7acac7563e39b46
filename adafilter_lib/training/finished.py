"""A finished run, rebuilt for analysis: config -> method, splits, model -> best weights -> device.

Every consumer of finished runs (counterfactual gates, compaction, the pruning benchmark) loads through
:func:`load_finished_run`, so each gets the same network the run measured its test error with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from ..core import distributed as dist_utils
from ..core import runs
from ..core.config import RunConfig, load_config
from ..core.errors import KitError
from ..core.model import TransferModel
from ..data import DataSplits
from ..methods import Method
from .setup import place, prepare_run


@dataclass
class FinishedRun:
    run_dir: Path
    cfg: RunConfig
    method: Method
    splits: DataSplits
    model: TransferModel  # on ``device``, in the run's memory format, best weights loaded and finalized
    device: torch.device
    best_state: dict  # ``best.pt`` as loaded (on ``device``): restore it after changing the model

    def restore(self) -> TransferModel:
        """Put the run's own weights and BN statistics back (after an override or a recalibration)."""
        self.model.load_state_dict(self.best_state)
        self.method.finalize(self.model)
        return self.model


def _as_trained(cfg: RunConfig) -> RunConfig:
    """A pruning run's network is built as ``finetune``'s (its zeros or its missing channels are in ``best.pt``)."""
    from ..methods.fine_pruning import PRUNING_METHODS

    if cfg.method.name in {m.name for m in PRUNING_METHODS}:
        return dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, name="finetune"))
    return cfg


def load_finished_run(run_dir: Union[str, Path], device: Optional[str] = None, hint: str = "train it first") -> FinishedRun:
    """The model of a finished run as its test split measured it (pruning runs included: masks baked in,
    channel-pruned networks resized): ``best.pt`` loaded, ``method.finalize``
    applied (e.g. WiSE-FT's interpolation), on ``device`` (default: the run's ``device`` setting) in the
    memory format the run trained with.

    Raises:
        KitError: ``run_dir`` is not a finished run with ``best.pt`` (the message ends with ``hint``).
    """
    run_dir = Path(run_dir)
    if not runs.is_finished(run_dir) or not (run_dir / runs.BEST).is_file():
        raise KitError(f"'{run_dir}' is not a finished run with {runs.BEST}; {hint}")
    cfg = load_config(run_dir / runs.CONFIG)
    method, splits, model = prepare_run(_as_trained(cfg))
    best_state = runs.load_checkpoint(run_dir / runs.BEST, "cpu", fix=f"retrain the run with --force ({hint})")
    if cfg.method.name == "channel_pruning":  # a smaller network: its shapes come from best.pt
        from ..core.model import shrink_to_state

        shrink_to_state(model, best_state)
    model, where = place(model, cfg, dist_utils.local_device(device or cfg.device))
    best_state = {key: value.to(where) for key, value in best_state.items()}
    finished = FinishedRun(run_dir, cfg, method, splits, model, where, best_state)
    finished.restore()
    return finished
