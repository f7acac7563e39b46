"""Transfer-learning methods: what differs between them, as one small object each.

The training loop (:mod:`adafilter_lib.core.engine`) is the same for every method; a
:class:`~.base.Method` only decides how the network is built from the pretrained model, which
parameters train, the optimizer's parameter groups, train/eval mode of each part, and an optional
extra loss term. ``METHODS`` maps each name to its class. To add a method: a ``Method`` subclass in
a module here, its options (if any) as a dataclass in ``core/method_config.py``, and its name in ``METHODS``.

May import: ``core``, ``data``, ``adafilter``.
"""

from __future__ import annotations

from ..core.config import RunConfig
from ..core.errors import unknown_name
from .adafilter import ADAFILTER_METHODS, AdaFilter
from .base import L2SP, LinearProbe, Method, Scratch
from .fine_pruning import PRUNING_METHODS
from .partial_finetune import PARTIAL_FINETUNE_METHODS
from .regularizers import REGULARIZER_METHODS
from .spottune import SpotTune

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (
        Method,
        LinearProbe,
        L2SP,
        Scratch,
        *ADAFILTER_METHODS,
        *PRUNING_METHODS,
        *REGULARIZER_METHODS,
        *PARTIAL_FINETUNE_METHODS,
        SpotTune,
    )
}


def method_names() -> list[str]:
    return sorted(METHODS)


def build_method(cfg: RunConfig) -> Method:
    """The method object named by ``cfg.method.name``."""
    if cfg.method.name not in METHODS:
        raise unknown_name("method", cfg.method.name, METHODS)
    return METHODS[cfg.method.name](cfg)


__all__ = ["METHODS", "Method", "LinearProbe", "L2SP", "Scratch", "AdaFilter", "build_method", "method_names"]
