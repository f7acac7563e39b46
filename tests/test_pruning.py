"""Fine-Pruning: masks, compression from actual zeros, the resumable Optuna study, the baseline, the CLI."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adafilter_lib.analysis.pruning_figures import pareto_front
from adafilter_lib.analysis.results import load_runs
from adafilter_lib.cli.app import main
from adafilter_lib.core import runs
from adafilter_lib.core.config import load_config
from adafilter_lib.core.errors import KitError
from adafilter_lib.core.model import TransferModel, build_transfer_model
from adafilter_lib.pruning import masks as pruning
from adafilter_lib.pruning import pruned_state
from adafilter_lib.pruning.runner import STUDY_FILE, TRIALS_FILE, run_fine_pruning, run_prune_after_finetune
from adafilter_lib.pruning.search import objective_value, open_study, to_log_compression, to_sparsity
from adafilter_lib.training.trainer import fit

# A study small enough for a test: no warmup, trials scored right after pruning, one masked epoch at the end.
FAST_STUDY = [
    "method.fine_pruning.rounds=2",
    "method.fine_pruning.trials=4",
    "method.fine_pruning.startup_trials=2",
    "method.fine_pruning.warmup_epochs=0",
    "method.fine_pruning.trial_epochs=0",
    "method.fine_pruning.round_epochs=0",
    "method.fine_pruning.final_epochs=1",
]


def _resnet():
    torch.manual_seed(0)
    return build_transfer_model("resnet18", 5, pretrained=False)


def _tiny_net(conv_weights):
    features = nn.Sequential(nn.Conv2d(1, 2, 2, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = TransferModel(features, 2, 3)
    with torch.no_grad():
        features[0].weight.copy_(torch.tensor(conv_weights, dtype=torch.float32).view(2, 1, 2, 2))
        model.head.weight.fill_(0.5)
        model.head.bias.fill_(0.1)
    return model


def test_masks_reach_the_requested_sparsity_per_layer_and_stay_through_training():
    model = _resnet()
    layers = pruning.attach_masks(model)
    requested = {name: [0.0, 0.3, 0.5, 0.9][i % 4] for i, name in enumerate(layers)}
    pruning.set_masks(model, pruning.magnitude_masks(model, requested))
    table = pruned_state.sparsity_table(model).set_index("layer")
    for name, s in requested.items():
        assert table.at[name, "weights"] - table.at[name, "nonzero"] == round(s * layers[name].weight_orig.numel()), name
    masks = {n: m.weight_mask.clone() for n, m in layers.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)).logits, torch.tensor([0, 1, 2, 3]))
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.count_nonzero(m.weight_orig.grad[masks[n] == 0]) == 0 for n, m in layers.items())
        optimizer.step()
    model(torch.randn(2, 3, 32, 32))  # the pre-hook recomputes weight = weight_orig * mask
    for name, module in layers.items():
        assert torch.count_nonzero(module.weight[masks[name] == 0]) == 0, name
    assert pruned_state.sparsity_table(model).set_index("layer")["nonzero"].to_dict() == table["nonzero"].to_dict()


def test_splicing_lets_gradients_reach_pruned_weights_and_masks_change_from_dense_weights():
    model = _resnet()
    layers = pruning.attach_masks(model, straight_through=True)
    conv = layers["conv1"]
    pruning.set_masks(model, pruning.magnitude_masks(model, {"conv1": 0.5}))
    pruned = conv.weight_mask == 0
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)).logits, torch.tensor([0, 1, 2, 3])).backward()
    assert torch.count_nonzero(conv.weight_orig.grad[pruned]) > 0
    with torch.no_grad():  # a pruned weight grows large in the dense tensor: a dense recomputation keeps it
        conv.weight_orig[pruned.nonzero()[0].tolist()] = 100.0
    pruning.set_masks(model, pruning.magnitude_masks(model, {"conv1": 0.5}, dense=True))
    assert conv.weight_mask[tuple(pruned.nonzero()[0].tolist())] == 1
    assert int((conv.weight_mask == 0).sum()) == round(0.5 * conv.weight_orig.numel())


def test_compression_is_computed_from_actual_zero_counts():
    model = _tiny_net([0, 1, -2, 3, 4, 0, 6, -7])  # two weights are zero before any pruning
    pruning.attach_masks(model)
    stats = pruned_state.compression_stats(model)
    assert stats["nonzero_prunable"] == 6 and stats["compression"] == 8 / 6
    pruning.set_masks(model, pruning.magnitude_masks(model, {"0": 0.5}))  # zeros, then |1| and |-2|
    assert model.features[0].weight.flatten().tolist() == [0, 0, 0, 3, 4, 0, 6, -7]
    stats = pruned_state.compression_stats(model)
    assert (stats["prunable_params"], stats["nonzero_prunable"], stats["compression"], stats["sparsity"]) == (8, 4, 2.0, 0.5)
    assert (stats["total_params"], stats["nonzero_params"]) == (8 + 9, 4 + 9)  # head: 6 weights + 3 biases, all nonzero


def test_global_prune_reaches_the_overall_sparsity_and_the_export_loads_into_a_plain_model():
    model = _resnet().eval()
    pruning.attach_masks(model)
    pruning.set_masks(model, pruning.global_magnitude_masks(model, 0.8))
    stats = pruned_state.compression_stats(model)
    assert stats["prunable_params"] - stats["nonzero_prunable"] == round(0.8 * stats["prunable_params"])
    images = torch.randn(2, 3, 32, 32)
    plain = _resnet().eval()
    plain.load_state_dict(pruned_state.export_pruned(model))
    assert torch.equal(plain(images).logits, model(images).logits)
    again = _resnet().eval()
    pruning.attach_masks(again)
    pruned_state.load_pruned(again, pruned_state.export_pruned(model))
    assert torch.equal(again(images).logits, model(images).logits)
    assert pruned_state.compression_stats(again)["nonzero_prunable"] == stats["nonzero_prunable"]


def test_stages_group_layers_and_the_log_scale_round_trips():
    groups = pruning.layer_groups(_resnet(), "stage")
    assert list(groups) == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert "layer2.0.downsample.0" in groups["layer2"] and len(groups["layer1"]) == 4
    assert pruning.stage_of("blocks.3.1.conv_pw") == "blocks.3" and pruning.stage_of("conv_head") == "conv_head"
    assert list(pruning.layer_groups(_resnet(), "stage", min_weights=10_000)) == [
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]  # conv1: 9,408
    assert to_log_compression(0.9) == pytest.approx(1.0) and to_sparsity(2.0) == pytest.approx(0.99)
    assert objective_value(10.0, 100.0, 0.99, lam=0.1, term="log10") == pytest.approx(0.9 + 0.2)
    assert objective_value(10.0, 100.0, 0.99, lam=0.1, term="sparsity") == pytest.approx(0.9 + 0.099)


def test_a_stage_is_pruned_with_one_threshold_over_its_layers():
    model = _tiny_net([1, 2, 3, 4, 5, 6, 7, 8])
    model.features = torch.nn.Sequential(
        model.features[0], torch.nn.Conv2d(2, 1, 1, bias=False), model.features[1], model.features[2]
    )
    with torch.no_grad():
        model.features[1].weight.copy_(torch.tensor([10.0, 0.5]).view(1, 2, 1, 1))
    pruning.attach_masks(model)
    groups = {"all": ["0", "1"]}  # 10 weights, half pruned: 0.5, 1, 2, 3, 4 go, whatever layer they are in
    pruning.set_masks(model, pruning.group_masks(model, {"all": 0.5}, groups))
    assert model.features[0].weight.flatten().tolist() == [0, 0, 0, 0, 5, 6, 7, 8]
    assert model.features[1].weight.flatten().tolist() == [10, 0]
    pruning.set_masks(model, pruning.group_masks(model, {"all": 0.0}, groups))  # masks are rewritten, not stacked
    assert pruned_state.compression_stats(model)["nonzero_prunable"] == 10
    masks = pruning.global_magnitude_masks(model, 0.3, names=["0"])  # 3 of all 10 weights, taken from layer 0 only
    assert int((masks["0"] == 0).sum()) == 3 and set(masks) == {"0"}


def test_pareto_front_keeps_exactly_the_undominated_trials():
    trials = pd.DataFrame(
        {"state": ["COMPLETE"] * 5 + ["FAIL"], "compression": [2, 4, 8, 8, 3, 50], "val_top1_err": [10, 12, 20, 15, 11, 0]}
    )
    front = pareto_front(trials)
    assert front[["compression", "val_top1_err"]].values.tolist() == [[2, 10], [3, 11], [4, 12], [8, 15]]


class SimulatedKill(Exception):
    pass


def test_a_study_killed_mid_trial_resumes_with_every_finished_trial_kept(tiny_overrides):
    cfg = load_config(None, tiny_overrides + FAST_STUDY + ["method.name=fine_pruning"])

    def kill_at_third_trial(round_index, number):
        if (round_index, number) == (0, 2):
            raise SimulatedKill

    with pytest.raises(SimulatedKill):
        run_fine_pruning(cfg, progress=False, trial_hook=kill_at_third_trial)
    staging = runs.staging_dir(cfg.run_dir())
    study = open_study(staging / STUDY_FILE, 0)
    finished = [(t.number, t.params, t.value) for t in study.trials if t.state.name == "COMPLETE"]
    assert [n for n, _, _ in finished] == [0, 1] and study.trials[2].state.name == "FAIL"
    study.ask()  # a trial a hard kill would leave RUNNING
    with pytest.raises(KitError, match="--resume"):
        run_fine_pruning(cfg, progress=False)
    summary = run_fine_pruning(cfg, resume=True, progress=False)
    trials = pd.read_csv(cfg.run_dir() / TRIALS_FILE)
    first = trials[trials["round"] == 1]
    assert first["state"].tolist() == ["COMPLETE", "COMPLETE", "FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    resumed = open_study(cfg.run_dir() / STUDY_FILE, 0)
    assert [(t.number, t.params, t.value) for t in resumed.trials[:2]] == finished
    assert (trials[trials["round"] == 2]["state"] == "COMPLETE").sum() == 4 and summary["trials"] == 8
    # The reported model is as sparse as its summary says, and the per-layer table adds up to it.
    table = pd.read_csv(cfg.run_dir() / "sparsity.csv")
    assert table["weights"].sum() / table["nonzero"].sum() == pytest.approx(summary["compression"])
    assert summary["compression"] > 1.0 and math.isfinite(summary["top1_err"])


def test_prune_after_finetune_prunes_to_fine_prunings_sparsity_and_fit_points_to_the_command(tiny_overrides):
    base = tiny_overrides + FAST_STUDY
    with pytest.raises(KitError, match="fine_pruning"):
        run_prune_after_finetune(load_config(None, base + ["method.name=prune_after_finetune"]), progress=False)
    cfg = load_config(None, base + ["method.name=prune_after_finetune", "method.fine_pruning.target_sparsity=0.75"])
    assert not runs.staging_dir(cfg.run_dir()).exists()
    summary = run_prune_after_finetune(cfg, progress=False)
    assert summary["sparsity"] == pytest.approx(0.75, abs=1e-6) and summary["epochs"] == 1
    row = load_runs(cfg.runs_root).set_index("method").loc["prune_after_finetune"]  # the tables pick the run up
    assert (row["top1_err"], row["compression"], row["nonzero_params"]) == (
        summary["top1_err"],
        summary["compression"],
        summary["nonzero_params"],
    )
    with pytest.raises(KitError, match="adafilter_lib prune --method fine_pruning"):
        fit(load_config(None, base + ["method.name=fine_pruning"]), progress=False)


def test_prune_cli_reports_a_missing_fine_pruning_run_in_one_line(tiny_overrides, capsys):
    code = main(["prune", "--method", "prune_after_finetune", "--set", *tiny_overrides])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: prune_after_finetune prunes to the sparsity of") and err.count("\n") == 1


@pytest.mark.parametrize(
    "override, words",
    [
        ("method.fine_pruning.sampler=cmaes", "sampler must be one of gp, tpe; got 'cmaes'"),
        ("method.fine_pruning.max_sparsity=1.0", "strictly between 0 and 1"),
        ("method.fine_pruning.final_epochs=0", "final_epochs at least 1"),
    ],
)
def test_invalid_fine_pruning_options_are_one_line_errors(override, words):
    with pytest.raises(KitError, match=words) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)
