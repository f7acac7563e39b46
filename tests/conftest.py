"""Shared fixtures: tiny configs on real offline data with small random-weight models."""

from __future__ import annotations

import pytest
import torch

from adafilter_lib.core.config import load_config
from adafilter_lib.studies import notebook_grid

torch.set_num_threads(2)


@pytest.fixture
def tiny_overrides(tmp_path):
    """A run small enough for a test: 4 labelled digits per class at 32 px, random-init ResNet-18, 2 epochs."""
    return [
        "data.dataset=digits",
        "data.n_per_class=4",
        "data.val_fraction=0.25",
        "data.resolution=32",
        "data.batch_size=8",
        "data.eval_batch_size=64",
        "model.backbone=resnet18",
        "model.pretrained=false",
        "optim.epochs=2",
        "optim.lr=0.01",
        "optim.head_lr=0.05",
        "optim.chance_loss_factor=0",  # random weights, 2 epochs: mechanics, not learning (tests of the check set it)
        f"runs_root={tmp_path / 'runs'}",
    ]


@pytest.fixture
def tiny_cfg(tiny_overrides):
    return load_config(None, tiny_overrides)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The SMOKE notebooks' AdaFilter run directory (test_notebooks, test_widgets and test_browser read it).

    Trained once per session; ``fit_or_reuse`` also reuses it when a SMOKE notebook trained it first.
    """
    cfg = notebook_grid.smoke_config(tmp_path_factory.getbasetemp() / "smoke_runs", "adafilter")
    notebook_grid.fit_or_reuse(cfg)
    return cfg.run_dir()
