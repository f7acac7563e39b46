"""Gates that learn from held-out images: the carving of the training split, and which parameters each batch
updates (weights on training batches, the gate network on held-out batches, nothing else)."""

import numpy as np
import pytest
import torch

from adafilter_lib.core.config import load_config
from adafilter_lib.core.engine import train_one_epoch
from adafilter_lib.core.errors import KitError
from adafilter_lib.core.optim import build_optimizer, build_scheduler
from adafilter_lib.data import build_datasets
from adafilter_lib.training.setup import holdout_loader, prepare_run, train_loader
from adafilter_lib.training.trainer import fit

GATES_ON_HOLDOUT = ["method.name=adafilter", "method.adafilter.gates_on_holdout=true", "data.holdout_fraction=0.34"]


def _images(dataset) -> list[bytes]:
    return sorted(image.tobytes() for image in dataset.images)


def test_the_held_out_part_is_a_stratified_share_of_the_training_split_fixed_by_split_seed(tiny_overrides):
    plain = build_datasets(load_config(None, tiny_overrides).data, (0.5,) * 3, (0.5,) * 3)
    cfg = load_config(None, tiny_overrides + ["data.holdout_fraction=0.34", "seed=5"])
    splits = build_datasets(cfg.data, (0.5,) * 3, (0.5,) * 3)
    weights, held = _images(splits.train), _images(splits.holdout)
    assert sorted(weights + held) == _images(plain.train) and not set(weights) & set(held)  # the training part, divided
    assert np.bincount(np.asarray(splits.holdout.labels)).tolist() == [1] * 10  # 3 training images per class: 1 held
    again = build_datasets(
        load_config(None, tiny_overrides + ["data.holdout_fraction=0.34", "seed=6"]).data, (0.5,) * 3, (0.5,) * 3
    )
    assert _images(again.holdout) == held  # the run seed does not move it (split_seed does)
    other = load_config(None, tiny_overrides + ["data.holdout_fraction=0.34", "data.split_seed=1"]).data
    assert _images(build_datasets(other, (0.5,) * 3, (0.5,) * 3).holdout) != held


def _steps_seen(cfg):
    """Train one epoch; for every optimizer step, the names of the parameters that had a gradient."""
    method, splits, model = prepare_run(cfg)
    method.prepare(model)
    optimizer = build_optimizer(method.param_groups(model), cfg.optim)
    loader = train_loader(splits, cfg, 0)
    scheduler = build_scheduler(optimizer, cfg.optim, len(loader))
    names = {id(p): n for n, p in model.named_parameters()}
    seen = []
    optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append({names[id(p)] for g in opt.param_groups for p in g["params"] if p.grad is not None})
    )
    method.begin_epoch(model, 0)
    train_one_epoch(
        model,
        method,
        loader,
        optimizer,
        scheduler,
        torch.device("cpu"),
        0,
        progress=False,
        holdout=holdout_loader(splits, cfg, 0),
    )
    return model, seen


def test_weights_step_on_training_batches_and_gates_on_held_out_batches_only(tiny_overrides):
    model, seen = _steps_seen(load_config(None, tiny_overrides + GATES_ON_HOLDOUT))
    gates = {n for n, p in model.named_parameters() if n.startswith("gate_net.")}
    weights = {n for n, p in model.named_parameters() if p.requires_grad} - gates
    assert len(seen) == 2 * 2  # 20 training images, batches of 8 (drop_last): 2 steps, each with a held-out step
    for weight_pass, gate_pass in zip(seen[0::2], seen[1::2]):
        assert weight_pass == weights  # every weight and the head, no gate parameter
        assert gate_pass == gates  # the gate network only: no weight gradient computed


def test_without_the_option_every_parameter_steps_on_training_batches(tiny_overrides):
    model, seen = _steps_seen(load_config(None, tiny_overrides + ["method.name=adafilter", "data.holdout_fraction=0.34"]))
    assert len(seen) == 2 and all(s == {n for n, p in model.named_parameters() if p.requires_grad} for s in seen)


def test_a_held_out_gate_run_trains_records_its_split_and_is_reproducible(tiny_overrides, tmp_path):
    overrides = tiny_overrides + GATES_ON_HOLDOUT
    first = fit(load_config(None, overrides + [f"runs_root={tmp_path}/a"]), progress=False)
    second = fit(load_config(None, overrides + [f"runs_root={tmp_path}/b"]), progress=False)
    assert first["num_train"] == 20 and first["num_holdout"] == 10 and first["num_val"] == 10
    assert first["top1_err"] == second["top1_err"] and first["val_top1_err"] == second["val_top1_err"]


def test_held_out_gates_need_held_out_images():
    with pytest.raises(KitError, match="data.holdout_fraction"):
        load_config(None, ["method.name=adafilter", "method.adafilter.gates_on_holdout=true"])


def test_the_gate_warm_up_takes_no_held_out_step_and_the_run_trains_through_it(tiny_overrides, tmp_path):
    warm = tiny_overrides + GATES_ON_HOLDOUT + ["method.adafilter.gate_warmup_epochs=1"]
    model, seen = _steps_seen(load_config(None, warm))  # epoch 0 of a 1-epoch warm-up: every gate 1, no gate network
    assert len(seen) == 2 and not any(n.startswith("gate_net.") for s in seen for n in s)
    summary = fit(load_config(None, warm + [f"runs_root={tmp_path}"]), progress=False)  # then the gates learn held out
    assert summary["epochs"] == 2 and summary["num_holdout"] == 10
