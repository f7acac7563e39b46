"""Counterfactual gates: overrides give exactly the fixed-gate networks and restore the learned gates;
a finished run evaluated with its learned gates reproduces its own errors."""

import copy
import dataclasses
import shutil

import pandas as pd
import pytest
import torch

from adafilter_lib.analysis import counterfactual
from adafilter_lib.cli.app import main
from adafilter_lib.core.config import load_config
from adafilter_lib.core.errors import KitError
from adafilter_lib.core.model import build_transfer_model
from adafilter_lib.methods import build_method
from adafilter_lib.training.trainer import fit

IMAGES = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _model(*overrides):
    """A random-init ResNet-18 AdaFilter model whose banks differ and whose gates mix 0 and 1."""
    cfg = load_config(None, ["method.name=adafilter", "model.backbone=resnet18", *overrides])
    torch.manual_seed(0)
    model = build_method(cfg).build_model(build_transfer_model("resnet18", 5, pretrained=False))
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in model.gated_layers().values():
            layer.weight_finetuned.add_(0.05 * torch.randn_like(layer.weight_finetuned))
        for p in model.gate_net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _all_equal(gates, value):
    return all(bool(g.eq(value).all()) for g in gates.values())


@torch.no_grad()
def test_overrides_equal_the_fixed_gate_networks_and_the_learned_gates_come_back():
    model = _model()
    learned = model(IMAGES)
    assert 0 < torch.cat([g.flatten() for g in learned.gates.values()]).mean() < 1  # forcing changes something
    for gates, value in (("ones", 1.0), ("zeros", 0.0)):
        fixed = copy.deepcopy(model)
        fixed.router.cfg = dataclasses.replace(fixed.router.cfg, gates=gates)  # the ablation's own network
        with counterfactual.gates_overridden(model, gates):
            forced = model(IMAGES)
        assert _all_equal(forced.gates, value)
        assert torch.equal(forced.logits, fixed(IMAGES).logits)
        assert not torch.equal(forced.logits, learned.logits)
    with counterfactual.gates_overridden(model, "learned"):
        assert torch.equal(model(IMAGES).logits, learned.logits)
    with pytest.raises(RuntimeError, match="inside"), counterfactual.gates_overridden(model, "zeros"):
        raise RuntimeError("inside")
    assert torch.equal(model(IMAGES).logits, learned.logits)  # restored after an error too
    with pytest.raises(KitError, match="unknown gate override 'half'"), counterfactual.gates_overridden(model, "half"):
        pass


@torch.no_grad()
def test_a_warmup_checkpoint_keeps_its_ones_as_learned_and_can_still_be_forced_to_zeros():
    model = _model("method.adafilter.gate_warmup_epochs=2", "method.adafilter.gate_bias_init=-3")
    model.gate_warmup.fill_(True)  # as in a best epoch inside the warm-up
    with counterfactual.gates_overridden(model, "learned"):
        assert _all_equal(model(IMAGES).gates, 1.0)
    with counterfactual.gates_overridden(model, "zeros"):
        assert _all_equal(model(IMAGES).gates, 0.0)
    assert bool(model.gate_warmup)


@pytest.mark.slow
def test_a_finished_run_reproduces_its_own_errors_with_learned_gates(tiny_overrides, tmp_path, capsys):
    ada = load_config(None, tiny_overrides + ["method.name=adafilter", "optim.epochs=1", "method.adafilter.gate_bias_init=0.3"])
    summary = fit(ada, progress=False)
    finetune = load_config(None, tiny_overrides + ["method.name=finetune", "optim.epochs=1"])
    fit(finetune, progress=False)
    table = counterfactual.counterfactual_table(ada.runs_root)
    assert table.method.unique().tolist() == ["adafilter"]  # the fine-tuning run has no gates and is left out
    assert table.gates.tolist() == ["learned", "ones", "zeros"]
    by_gates = table.set_index("gates")
    assert by_gates.at["learned", "val_top1_err"] == summary["val_top1_err"]
    assert by_gates.at["learned", "top1_err"] == summary["top1_err"]
    assert by_gates.at["learned", "val_frac_finetuned"] == pytest.approx(
        pd.read_json(ada.run_dir() / "metrics.jsonl", lines=True).val_frac_finetuned.iloc[summary["best_epoch"] - 1]
    )
    assert (by_gates.at["ones", "val_frac_finetuned"], by_gates.at["zeros", "val_frac_finetuned"]) == (1.0, 0.0)
    recalibrated = counterfactual.counterfactual_errors(ada.run_dir(), ["learned", "zeros"], recalibrate=True)
    assert recalibrated.at[0, "top1_err"] == summary["top1_err"]  # the learned gates are never recalibrated
    out = tmp_path / "counterfactual.csv"
    assert main(["counterfactual", "--runs", str(ada.runs_root), "--gates", "ones", "--out", str(out)]) == 0
    assert pd.read_csv(out).gates.tolist() == ["ones"] and "| adafilter" in capsys.readouterr().out
    finetune_only = tmp_path / "ft_runs"
    shutil.copytree(finetune.run_dir(), finetune_only / finetune.run_dir().name)
    with pytest.raises(KitError, match="no finished adafilter run with learned gates"):
        counterfactual.counterfactual_table(finetune_only)
    with pytest.raises(KitError, match="has no learned gates"):
        counterfactual.counterfactual_errors(next(finetune_only.iterdir()))
