"""AdaFilter compaction: threshold 0 is the identity, dropped filters act as pretrained ones, storage round trip."""

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from adafilter_lib.cli.app import main
from adafilter_lib.core.config import load_config
from adafilter_lib.core.model import build_transfer_model
from adafilter_lib.methods import build_method
from adafilter_lib.pruning import compaction
from adafilter_lib.training.trainer import fit

IMAGES = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _adafilter(trained=True):
    """A random-init ResNet-18 AdaFilter model; ``trained``: fine-tuned filters, BN and gates moved as training would."""
    cfg = load_config(None, ["method.name=adafilter", "model.backbone=resnet18", "method.adafilter.gate_bias_init=0.3"])
    torch.manual_seed(0)
    model = build_method(cfg).build_model(build_transfer_model("resnet18", 5, pretrained=False))
    if not trained:
        return model.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in model.gated_layers().values():
            layer.weight_finetuned.add_(0.05 * torch.randn_like(layer.weight_finetuned))
            layer.bn_finetuned.weight.mul_(1.2)
            layer.bn_pretrained.running_mean.add_(0.1)  # target-adapted statistics of the pretrained path
        for p in model.gate_net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _frequency(model):
    with torch.no_grad():  # (a forward with gradients leaves graph tensors in the gate state, which deepcopy refuses)
        gates = model(IMAGES).gates
    return {name: g.float().mean(0).numpy() for name, g in gates.items()}


def test_threshold_zero_changes_nothing():
    model = _adafilter()
    frequency = _frequency(model)
    assert any(((f > 0) & (f < 1)).any() for f in frequency.values())  # real per-image selection to compact
    before = copy.deepcopy(model.state_dict())
    compacted = compaction.compact(copy.deepcopy(model), compaction.keep_masks(frequency, 0.0))
    assert all(torch.equal(v, before[k]) for k, v in compacted.state_dict().items())
    assert torch.equal(compacted(IMAGES).logits, model(IMAGES).logits)


def test_dropping_every_filter_gives_the_all_pretrained_gates_network():
    model = _adafilter()
    compacted = compaction.compact(copy.deepcopy(model), compaction.keep_masks(_frequency(model), 1.01))
    zeros = copy.deepcopy(model)
    zeros.router.cfg = dataclasses.replace(zeros.router.cfg, gates="zeros")
    output = compacted(IMAGES)
    assert torch.equal(output.logits, zeros(IMAGES).logits)
    assert all(torch.count_nonzero(g) == 0 for g in output.gates.values())  # the gates themselves say "pretrained"


def test_a_dropped_filter_computes_the_pretrained_channel_for_any_gate():
    model = _adafilter()
    name, layer = next(iter(model.gated_layers().items()))
    keep = np.arange(layer.out_channels) % 3 != 0  # drop every third filter
    original = copy.deepcopy(layer)
    compaction.compact(
        model, {n: (keep if n == name else np.ones(l.out_channels, bool)) for n, l in model.gated_layers().items()}
    )
    x = torch.randn(2, layer.in_channels, 8, 8)
    gates = torch.randint(0, 2, (2, layer.out_channels)).float()
    assert torch.equal(layer(x, gates), original(x, gates * torch.as_tensor(keep).float()))


def test_stored_task_round_trips_and_counts_only_kept_filters():
    model = _adafilter()
    keep = compaction.keep_masks(_frequency(model), 0.5)
    compacted = compaction.compact(copy.deepcopy(model), keep)
    state = compaction.compact_state(compacted, keep)
    fresh = _adafilter(trained=False)  # the shared pretrained backbone, nothing of the task yet
    assert not torch.equal(fresh(IMAGES).logits, compacted(IMAGES).logits)
    compaction.load_compact_state(fresh, state)
    assert torch.equal(fresh(IMAGES).logits, compacted(IMAGES).logits)
    counts = compaction.extra_params(compacted, keep)
    stored_filters = sum(e["weight"].numel() + 2 * len(e["index"]) for e in state["layers"].values())
    assert counts["filter_params"] == stored_filters
    assert counts["kept_filters"] == sum(int(k.sum()) for k in keep.values())
    plain = build_transfer_model("resnet18", 5, pretrained=False)
    assert counts["backbone_params"] == sum(p.numel() for p in plain.features.parameters())
    assert counts["extra_params"] == counts["filter_params"] + counts["gate_net_params"] + counts["ungated_params"]
    stored_gate = sum(v.numel() for v in state["gate_net"].values()) + sum(
        e["gate_weight"].numel() + e["gate_bias"].numel() for e in state["layers"].values()
    )
    assert counts["gate_net_params"] == stored_gate < sum(p.numel() for p in model.gate_net.parameters())
    assert counts["ungated_params"] == sum(
        p.numel() for n, p in plain.features.named_parameters() if n.startswith(("conv1", "bn1"))
    )


@pytest.mark.slow
def test_sweep_of_a_finished_run_measures_validation_frequencies_and_starts_at_the_run_error(tiny_overrides, tmp_path, capsys):
    cfg = load_config(None, tiny_overrides + ["method.name=adafilter", "optim.epochs=1", "method.adafilter.gate_bias_init=0.3"])
    summary = fit(cfg, progress=False)
    table = compaction.compaction_sweep(cfg.run_dir(), [0.0, 0.5, 1.01], progress=False)
    assert table["threshold"].tolist() == [0.0, 0.5, 1.01]
    assert table.at[0, "top1_err"] == pytest.approx(summary["top1_err"]) and table.at[0, "top1_err_change"] == 0.0
    assert table["extra_params_frac"].is_monotonic_decreasing and table.at[2, "kept_filters"] == 0
    out = tmp_path / "compaction.csv"
    assert main(["compact", "--run", str(cfg.run_dir()), "--thresholds", "0", "--out", str(out), "--no-progress"]) == 0
    assert out.read_text().startswith("threshold,extra_params_frac,top1_err")
    # with progress on and the run given as a string (as the CLI passes it): one line per threshold
    assert main(["compact", "--run", str(cfg.run_dir()), "--thresholds", "0", "0.5", "1.01"]) == 0
    assert f"[{cfg.run_dir().name}] threshold 0.5:" in capsys.readouterr().out

    # The sweep is a run record: without the weights the same thresholds come back from it, paired per run
    from adafilter_lib.pruning.compaction_records import recorded_compaction_sweep

    recorded = pd.read_csv(cfg.run_dir() / "compaction.csv")
    pd.testing.assert_frame_equal(recorded, table, check_dtype=False)
    (cfg.run_dir() / "best.pt").unlink()
    assert main(["compact", "--runs", cfg.runs_root, "--thresholds", "0", "0.5", "1.01", "--out", str(out)]) == 0
    assert "threshold 0.5:" not in capsys.readouterr().out  # read, not swept
    rebuilt = pd.read_csv(out)
    assert rebuilt["run_dir"].nunique() == 1 and rebuilt["seed"].tolist() == [cfg.seed] * 3
    pd.testing.assert_frame_equal(rebuilt[table.columns], table, check_dtype=False)
    summary = pd.read_csv(tmp_path / "compaction_summary.csv")
    assert summary["seeds"].tolist() == [1, 1, 1] and summary["change_se"].isna().all()
    assert summary["top1_err_change"].tolist() == pytest.approx(table["top1_err_change"].tolist())
    # a subset of the recorded thresholds is read from the record too (rows as the sweep gave them)
    subset = recorded_compaction_sweep(cfg.run_dir(), [1.01, 0.0], progress=False)
    pd.testing.assert_frame_equal(subset, table.iloc[[0, 2]].reset_index(drop=True), check_dtype=False)
    # other thresholds need the weights again: one line naming the missing file, nothing written
    out.unlink()
    assert main(["compact", "--runs", cfg.runs_root, "--thresholds", "0.3", "--out", str(out)]) != 0
    assert "best.pt" in capsys.readouterr().err and not out.exists()


def test_compaction_summary_pairs_each_run_with_itself_and_averages_over_seeds():
    from adafilter_lib.pruning.compaction_records import compaction_summary

    rows = []
    for seed, (base, compacted) in enumerate([(10.0, 11.0), (12.0, 12.0), (8.0, 10.0)]):
        for threshold, err in ((0.0, base), (0.5, compacted)):
            rows.append(
                dict(group="adafilter/lr0.01", dataset="d", seed=seed, threshold=threshold, top1_err=err,
                     val_top1_err=err, extra_params_frac=1.0 - threshold, top1_err_change=err - base)
            )  # fmt: skip
    summary = compaction_summary(pd.DataFrame(rows)).set_index("threshold")
    assert summary.loc[0.0, "top1_err_change"] == 0.0 and summary.loc[0.0, "change_se"] == 0.0
    assert summary.loc[0.5, "seeds"] == 3 and summary.loc[0.5, "top1_err"] == pytest.approx(11.0)
    assert summary.loc[0.5, "top1_err_change"] == pytest.approx(1.0)
    assert summary.loc[0.5, "change_se"] == pytest.approx(np.std([1.0, 0.0, 2.0], ddof=1) / np.sqrt(3))
