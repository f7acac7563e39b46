"""notebook_grid: the notebooks' grid configs, and reuse of finished runs only when their config matches."""

from __future__ import annotations

import json

import pytest
import yaml

from adafilter_lib.core import runs
from adafilter_lib.core.config import to_dict
from adafilter_lib.core.errors import KitError
from adafilter_lib.studies import notebook_grid


def test_smoke_grid_replaces_data_model_and_epochs(tmp_path):
    configs = notebook_grid.grid_configs(
        tmp_path, ["finetune", "adafilter"], [["mnist5k", 20]], "efficientnet_lite0", 6, [0, 1], smoke=True
    )
    assert [c.resolved_run_name() for c in configs] == ["digits__finetune__resnet18__s0", "digits__adafilter__resnet18__s0"]
    cfg = configs[1]
    assert (cfg.data.n_per_class, cfg.data.resolution, cfg.optim.epochs, cfg.model.pretrained, cfg.device) == (
        4,
        32,
        1,
        False,
        "cpu",
    )
    assert cfg.run_dir() == tmp_path / "digits__adafilter__resnet18__s0"
    assert to_dict(notebook_grid.smoke_config(tmp_path, "adafilter")) == to_dict(cfg)


def test_full_grid_is_the_demo_recipe_with_backbone_and_epochs():
    configs = notebook_grid.grid_configs("runs/x", ["finetune"], [["digits", 10], ["mnist5k", 20]], "resnet18", 3, [0, 1])
    assert [(c.data.dataset, c.data.n_per_class, c.seed) for c in configs] == [
        ("digits", 10, 0),
        ("digits", 10, 1),
        ("mnist5k", 20, 0),
        ("mnist5k", 20, 1),
    ]
    cfg = configs[0]
    assert (cfg.model.backbone, cfg.optim.epochs, cfg.data.resolution, cfg.optim.head_lr) == ("resnet18", 3, 64, 0.03)
    with pytest.raises(KitError, match="unknown method 'finetun'"):
        notebook_grid.grid_configs("runs/x", ["finetune", "finetun"], [["digits", 10]], "resnet18", 3, [0])
    with pytest.raises(KitError, match="unknown backbone 'resnet81'"):
        notebook_grid.grid_configs("runs/x", ["finetune"], [["digits", 10]], "resnet81", 3, [0])
    with pytest.raises(KitError, match="unknown dataset 'digit'"):
        notebook_grid.grid_configs("runs/x", ["finetune"], [["digit", 10]], "resnet18", 3, [0])


def _finished(cfg, saved: dict):
    run = cfg.run_dir()
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    (run / "summary.json").write_text(json.dumps({"top1_err": 12.5}))
    return run


def test_a_finished_run_with_the_same_config_is_reused_without_training(tmp_path):
    cfg = notebook_grid.smoke_config(tmp_path, "finetune")
    saved = to_dict(cfg)
    saved.update(runs_root="elsewhere/runs", device="cuda")  # where it lived and ran does not matter
    del saved["method"]["l2sp"]  # an option the kit added after this run: counts as its default
    _finished(cfg, saved)
    assert runs.config_differences(cfg, cfg.run_dir()) == []
    assert notebook_grid.fit_or_reuse(cfg) == ({"top1_err": 12.5}, True)
    grid = notebook_grid.fit_grid([cfg])
    assert grid[["run", "reused", "top1_err"]].values.tolist() == [["digits__finetune__resnet18__s0", True, 12.5]]


def test_a_finished_run_with_other_settings_is_an_error_and_stays(tmp_path):
    cfg = notebook_grid.smoke_config(tmp_path, "finetune")
    saved = to_dict(cfg)
    saved["optim"]["epochs"] = 6
    del saved["method"]["l2sp"]
    run = _finished(cfg, saved)
    cfg.method.l2sp.alpha = 0.5  # a non-default value for the option the saved file lacks
    assert runs.config_differences(cfg, run) == ["optim.epochs", "method.l2sp.alpha"]
    with pytest.raises(KitError, match=r"exists with other settings \(optim.epochs, method.l2sp.alpha\)"):
        notebook_grid.fit_or_reuse(cfg)
    assert (run / "summary.json").is_file() and yaml.safe_load((run / "config.yaml").read_text())["optim"]["epochs"] == 6
