"""Optional TensorBoard logging of a run's per-epoch metrics and gate usage (``log_tensorboard=true``).

Off by default, and an extra (``pip install -e ".[tensorboard]"``): the run records (``metrics.jsonl``)
stay the source of every table. When on, the main process writes event files to ``<run>/tensorboard/``;
``tensorboard --logdir runs/`` then shows every run's curves side by side, AdaFilter's gate usage
(``val/frac_finetuned`` and one ``gates_by_layer/<layer>`` curve per gated layer) included.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from .errors import KitError

EVENTS_DIR = "tensorboard"


def require_tensorboard() -> None:
    """Raise a one-line KitError unless the tensorboard package can be imported (checked before a run starts)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise KitError(
            'log_tensorboard=true needs the tensorboard package: pip install -e ".[tensorboard]" (or set log_tensorboard=false)'
        ) from None


class EpochLogger:
    """Writes the numbers of each epoch's ``metrics.jsonl`` record as TensorBoard scalars.

    Args:
        run_dir: the run's (staging) folder; events go to ``run_dir/tensorboard``.
    """

    def __init__(self, run_dir: Path):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / EVENTS_DIR))

    def log(self, record: dict) -> None:
        """One epoch: ``train_loss`` -> ``train/loss``, ``val_frac_by_layer[name]`` -> ``gates_by_layer/name``."""
        epoch = int(record["epoch"])
        for key, value in record.items():
            if key == "epoch":
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                split, _, name = key.partition("_")
                self.writer.add_scalar(f"{split}/{name}" if name else key, value, epoch)
            elif key == "val_frac_by_layer" and isinstance(value, dict):
                for layer, fraction in value.items():
                    self.writer.add_scalar(f"gates_by_layer/{layer}", fraction, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def epoch_logger(enabled: bool, run_dir: Path) -> Optional[EpochLogger]:
    """An :class:`EpochLogger` when ``enabled``, else None."""
    return EpochLogger(run_dir) if enabled else None


@contextmanager
def closing_logger(logger: Optional[EpochLogger]) -> Iterator[Optional[EpochLogger]]:
    """Yield ``logger`` and close it at the end (its events are flushed after every epoch anyway)."""
    try:
        yield logger
    finally:
        if logger is not None:
            logger.close()
