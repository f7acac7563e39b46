"""Pruning at a fixed budget: the cubic schedule of gradual magnitude pruning, Fine-Pruning's budget projection, the
baselines' targets, and pruning rows in a study recipe."""

import json
import math

import pandas as pd
import pytest
import torch
import yaml

from adafilter_lib.core import runs
from adafilter_lib.core.config import load_config
from adafilter_lib.core.errors import KitError
from adafilter_lib.pruning.baselines import cubic_sparsity, run_gradual_magnitude, target_sparsity
from adafilter_lib.pruning.runner import TRIALS_FILE, run_fine_pruning, run_pruning
from adafilter_lib.pruning.search import budget_fractions, to_log_compression
from adafilter_lib.pruning.sparse_file import SPARSE_BEST, load_sparse, save_sparse, sparse_round_trip
from adafilter_lib.studies.recipe import load_study
from adafilter_lib.studies.tune import run_study, selection_runs
from adafilter_lib.studies.tune_tables import write_tables

NO_SEARCH_EPOCHS = [
    "method.fine_pruning.warmup_epochs=0",
    "method.fine_pruning.trial_epochs=0",
    "method.fine_pruning.final_epochs=1",
]


def test_cubic_schedule_starts_at_zero_ends_at_the_target_and_front_loads_the_pruning():
    assert cubic_sparsity(0, 8, 0.75) == 0.0
    assert cubic_sparsity(8, 8, 0.75) == pytest.approx(0.75)
    assert cubic_sparsity(12, 8, 0.75) == pytest.approx(0.75)  # past the ramp it stays at the target
    assert cubic_sparsity(4, 8, 0.75) == pytest.approx(0.75 * (1 - 0.5**3))
    values = [cubic_sparsity(t, 8, 0.75) for t in range(9)]
    steps = [b - a for a, b in zip(values, values[1:])]
    assert all(s > 0 for s in steps) and steps == sorted(steps, reverse=True)


def _nonzero(fractions, weights, fixed):
    return fixed + sum(weights[g] * (1 - s) for g, s in fractions.items())


def test_budget_projection_keeps_the_proposed_allocation_and_reaches_the_budget_exactly():
    weights, fixed, total = {"a": 100, "b": 300}, 50, 450
    # Equal proposals: both groups keep the same fraction, 100 of 400 weights, so that 150 of 450 stay (3x).
    even = budget_fractions({"a": 0.0, "b": 0.0}, {"a": 0.0, "b": 0.0}, 2.0, weights, fixed, total, 3.0)
    assert even == pytest.approx({"a": 0.75, "b": 0.75})
    # A proposal that prunes b ten times harder keeps that ratio of kept fractions at the budget.
    skewed = budget_fractions({"a": 0.0, "b": 1.0}, {"a": 0.0, "b": 0.0}, 2.0, weights, fixed, total, 3.0)
    assert _nonzero(skewed, weights, fixed) == pytest.approx(150)
    assert (1 - skewed["a"]) / (1 - skewed["b"]) == pytest.approx(10)
    # A floor (the fraction a group already has) and the ceiling bind.
    half = {"a": 0.0, "b": to_log_compression(0.5)}  # b is already half pruned: only a can give the rest
    floored = budget_fractions({"a": 0.0, "b": 0.0}, half, 2.0, weights, fixed, total, 450 / 250)
    assert floored == pytest.approx({"a": 0.5, "b": 0.5}) and _nonzero(floored, weights, fixed) == pytest.approx(250)
    beyond = budget_fractions({"a": 0.0, "b": 0.0}, half, 2.0, weights, fixed, total, 1.2)  # the floors go further
    assert beyond == pytest.approx({"a": 0.0, "b": 0.5})
    capped = budget_fractions({"a": 0.0, "b": 0.0}, {"a": 0.0, "b": 0.0}, to_log_compression(0.5), weights, fixed, total, 100)
    assert capped == pytest.approx({"a": 0.5, "b": 0.5})  # out of reach: every group at max_sparsity


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["method.fine_pruning.target_compression=0.5"], "target_compression must be 1 or more"),
        (
            ["method.fine_pruning.target_compression=4", "method.fine_pruning.target_sparsity=0.5"],
            "not both",
        ),
        (["method.fine_pruning.prune_every=0"], "prune_every must be at least 1"),
    ],
)
def test_impossible_targets_are_refused_when_the_config_is_read(overrides, words):
    with pytest.raises(KitError, match=words):
        load_config(None, overrides)


def test_the_baselines_prune_to_the_target_compression_else_the_target_sparsity():
    assert target_sparsity(load_config(None, ["method.fine_pruning.target_compression=4"])) == 0.75
    assert target_sparsity(load_config(None, ["method.fine_pruning.target_sparsity=0.5"])) == 0.5


def test_gradual_magnitude_ramps_the_sparsity_on_the_cubic_schedule_then_fine_tunes_masked(tiny_overrides):
    cfg = load_config(
        None,
        tiny_overrides
        + NO_SEARCH_EPOCHS
        + [
            "method.name=gradual_magnitude",
            "method.fine_pruning.rounds=1",
            "method.fine_pruning.round_epochs=2",
            "method.fine_pruning.target_compression=4",
            "method.fine_pruning.prune_every=1",
        ],
    )
    summary = run_gradual_magnitude(cfg, progress=False)
    assert summary["sparsity"] == pytest.approx(0.75, abs=1e-6) and summary["compression"] == pytest.approx(4, rel=1e-5)
    records = [json.loads(line) for line in (cfg.run_dir() / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["gradual", "gradual", "final"] and summary["epochs"] == 3
    # 30 training images in batches of 8: 4 steps per epoch, 8 on the ramp; epoch 1 ends at step 4 of 8.
    assert records[0]["sparsity"] == pytest.approx(cubic_sparsity(4, 8, 0.75), abs=1e-4)
    assert records[1]["sparsity"] == pytest.approx(0.75, abs=1e-6) == records[2]["sparsity"]
    # The sparse copy is smaller on disk and holds exactly the weights of best.pt.
    dense = runs.load_checkpoint(cfg.run_dir() / runs.BEST)
    sparse = load_sparse(cfg.run_dir() / SPARSE_BEST)
    assert sparse.keys() == dense.keys() and all(torch.equal(sparse[k], dense[k]) for k in dense)
    assert summary["sparse_bytes"] < 0.5 * summary["best_bytes"]
    trip = sparse_round_trip(cfg.run_dir())  # into a plain, unmasked network: the error the run reported
    assert trip["top1_err_from_sparse"] == summary["top1_err"] and trip["size_ratio"] > 2


def test_sparse_file_round_trips_exactly_and_stores_only_what_saves_bytes(tmp_path):
    torch.manual_seed(0)
    conv = torch.randn(8, 4, 3, 3) * (torch.rand(8, 4, 3, 3) > 0.75)  # about 3/4 zeros
    state = {
        "conv.weight": conv,
        "bn.weight": torch.randn(8),  # no zeros: stored as it is
        "bn.num_batches_tracked": torch.tensor(5),
        "almost_dense": torch.ones(64).index_fill_(0, torch.tensor([3]), 0.0),  # one zero: the bitmask would cost more
    }
    size = save_sparse(state, tmp_path / "m.pt")
    torch.save(state, tmp_path / "dense.pt")
    loaded = load_sparse(tmp_path / "m.pt")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert loaded["conv.weight"].dtype == torch.float32 and loaded["bn.num_batches_tracked"].dtype == torch.int64
    stored = torch.load(tmp_path / "m.pt", weights_only=True)["tensors"]
    assert isinstance(stored["conv.weight"], dict) and not isinstance(stored["almost_dense"], dict)
    assert size == (tmp_path / "m.pt").stat().st_size


def test_a_damaged_or_foreign_sparse_file_is_one_line(tmp_path):
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "plain.pt")
    with pytest.raises(KitError, match="not a sparse model file"):
        load_sparse(tmp_path / "plain.pt")
    save_sparse({"w": torch.zeros(100)}, tmp_path / "m.pt")
    (tmp_path / "m.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:50])
    with pytest.raises(KitError, match="cannot be read") as err:
        load_sparse(tmp_path / "m.pt")
    assert "\n" not in str(err.value)


def test_fine_pruning_at_a_budget_reaches_each_rounds_compression_and_scores_accuracy_alone(tiny_overrides):
    cfg = load_config(
        None,
        tiny_overrides
        + NO_SEARCH_EPOCHS
        + [
            "method.name=fine_pruning",
            "method.fine_pruning.rounds=2",
            "method.fine_pruning.trials=3",
            "method.fine_pruning.startup_trials=2",
            "method.fine_pruning.round_epochs=0",
            "method.fine_pruning.granularity=layer",
            "method.fine_pruning.target_compression=9",
        ],
    )
    summary = run_fine_pruning(cfg, progress=False)
    trials = pd.read_csv(cfg.run_dir() / TRIALS_FILE)
    complete = trials[trials["state"] == "COMPLETE"]
    for round_number, budget in [(1, 3.0), (2, 9.0)]:  # gradual: 9 ** (1/2), then 9
        got = complete[complete["round"] == round_number]
        assert got["compression"].to_numpy() == pytest.approx(budget, rel=2e-3)
        assert got["objective"].to_numpy() == pytest.approx(1 - got["val_top1_err"].to_numpy() / 100)
    assert summary["compression"] == pytest.approx(9, rel=2e-3) and math.isfinite(summary["top1_err"])


def test_pruning_rows_run_through_tune_and_their_front_is_paired_with_dense_by_seed(tmp_path, tiny_overrides):
    recipe = {
        "set": tiny_overrides[1:] + NO_SEARCH_EPOCHS + ["method.fine_pruning.rounds=1", "method.fine_pruning.round_epochs=1"],
        "datasets": {"digits": 4},
        "seeds": [0, 1],
        "reference": "finetune",
        "runs": str(tmp_path / "study_runs"),
        "out": str(tmp_path / "out"),
        "rows": {
            "finetune": {"grid": {"optim.lr": [0.01]}},
            "gradual_magnitude_2x": {"method": "gradual_magnitude", "set": ["method.fine_pruning.target_compression=2"]},
            "gradual_magnitude_4x": {"method": "gradual_magnitude", "set": ["method.fine_pruning.target_compression=4"]},
            "channel_pruning_2x": {"method": "channel_pruning", "set": ["method.fine_pruning.target_macs_ratio=2"]},
        },
    }
    path = tmp_path / "prune.yaml"
    path.write_text(yaml.safe_dump(recipe))
    study = load_study(path)
    chosen = run_study(study, progress=False)
    assert len(chosen) == 4
    records = selection_runs(study, chosen)
    write_tables(study, records, "test")
    front = pd.read_csv(tmp_path / "out" / "front.csv")
    assert list(front["row"]) == ["gradual_magnitude_2x", "gradual_magnitude_4x"] and list(front["seeds"]) == [2, 2]
    assert front["target_compression"].tolist() == [2, 4] and front["compression"].to_numpy() == pytest.approx([2, 4], rel=1e-4)
    err = {(r["row"], r["seed"]): r["top1_err"] for r in records}
    diffs = [err[("gradual_magnitude_4x", s)] - err[("finetune", s)] for s in (0, 1)]
    assert front["diff_vs_dense"].iloc[1] == pytest.approx(sum(diffs) / 2)
    assert front["diff_se"].iloc[1] == pytest.approx(abs(diffs[0] - diffs[1]) / 2)  # SE of two paired differences
    assert (tmp_path / "out" / "front.png").stat().st_size > 0
    assert "| digits | gradual_magnitude |" in (tmp_path / "out" / "front.md").read_text()
    stages = pd.read_csv(tmp_path / "out" / "sparsity_by_stage.csv").set_index(["row", "stage"])
    four = stages.loc["gradual_magnitude_4x"]  # one global threshold: stages differ, the weighted sum is 3/4
    assert (four["weights"] * four["sparsity"]).sum() / four["weights"].sum() == pytest.approx(0.75, abs=1e-4)
    assert four.loc["conv1", "sparsity"] == 0  # the stem is under min_layer_weights: never pruned
    assert (four["seeds"] == 2).all() and (four["sparsity_min"] <= four["sparsity"]).all()  # the spread over seeds
    assert (four["sparsity"] <= four["sparsity_max"]).all() and four.loc["conv1", "sparsity_max"] == 0
    structured = pd.read_csv(tmp_path / "out" / "structured.csv")  # channel rows: their own table, not the front
    assert list(structured["variant"]) == ["channel_pruning_2x"] and structured["macs_ratio"].iloc[0] == pytest.approx(
        2, rel=0.02
    )
    assert list(structured.columns)[2:] == [
        "variant",
        "macs_ratio",
        "params_ratio",
        "latency_ratio_b1",
        "latency_ratio_b32",
        "top1_err",
        "diff_vs_dense",
        "diff_se",
        "seeds",
    ]


@pytest.mark.parametrize("recipe", ["uc_merced_pruning_few", "uc_merced_pruning_full"])
def test_every_method_of_a_pruning_study_walks_the_same_epochs_to_its_model(recipe):
    from adafilter_lib.studies.pruning_bench import path_epochs
    from adafilter_lib.studies.recipe import run_config

    study = load_study(f"studies/{recipe}")
    lengths = {}
    for row in study.rows:
        for cell in row.cells:
            cfg = run_config(study, row, "uc_merced", cell, 0)
            lengths[row.name, cell] = cfg.optim.epochs if row.method == "finetune" else path_epochs(cfg)
    assert len(set(lengths.values())) == 1, lengths
    targets = {
        row.name: run_config(study, row, "uc_merced", next(iter(row.cells)), 0).method.fine_pruning.target_compression
        for row in study.rows
    }
    for method in ("fine_pruning", "prune_after_finetune", "gradual_magnitude"):
        assert [targets[f"{method}_{c}x"] for c in (2, 4, 8, 16)] == [2, 4, 8, 16]
    macs = {
        row.name: run_config(study, row, "uc_merced", next(iter(row.cells)), 0).method.fine_pruning.target_macs_ratio
        for row in study.rows
    }
    assert (macs["channel_pruning_2x"], macs["channel_pruning_4x"]) == (2, 4)


def test_a_staging_folder_without_a_checkpoint_starts_over_empty(tiny_overrides):
    cfg = load_config(
        None,
        tiny_overrides + NO_SEARCH_EPOCHS + ["method.name=prune_after_finetune", "method.fine_pruning.target_compression=2"],
    )
    staging = runs.staging_dir(cfg.run_dir())
    staging.mkdir(parents=True)
    (staging / "state.pt").write_bytes(b"an older version's checkpoint")  # nothing this version can resume from
    (staging / "study.db").write_bytes(b"stale trials")
    summary = run_pruning(cfg, resume=True, progress=False)
    assert summary["compression"] == pytest.approx(2, rel=1e-4)
    assert not (cfg.run_dir() / "state.pt").exists() and not (cfg.run_dir() / "study.db").exists()


def test_the_pruning_benchmark_reports_a_failed_run_and_goes_on(tmp_path, monkeypatch, capsys):
    from adafilter_lib.core.errors import RunFailed
    from adafilter_lib.studies import pruning_bench

    def fails(cfg, **_):
        raise RunFailed(f"run '{cfg.run_dir()}' failed: validation loss is not finite")

    monkeypatch.setattr(pruning_bench, "run_prune_after_finetune", fails)
    bench = dict(
        runs_root=str(tmp_path / "runs"),
        out_dir=str(tmp_path / "out"),
        dataset="digits",
        n_per_class=4,
        overrides=[*pruning_bench.SMOKE_OVERRIDES, "optim.chance_loss_factor=0"],
        thresholds=[0.0, 1.01],
        progress=False,
        seeds=[0, 1],
    )
    summary, compaction = pruning_bench.run_pruning_bench(**bench)
    assert "failed: run '" in capsys.readouterr().out
    # the failed runs are left out, the rest is written, per seed
    assert list(zip(summary["seed"], summary["method"])) == [
        (0, "finetune"),
        (0, "fine_pruning"),
        (1, "finetune"),
        (1, "fine_pruning"),
    ]
    assert set(zip(compaction["seed"], compaction["variant"])) == {
        (s, v) for s in (0, 1) for v in ("adafilter", "adafilter_usage_penalty")
    }
    assert {p.name for p in (tmp_path / "out").glob("front*.png")} == {"front_seed0.png", "front_seed1.png"}
    comparison = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert set(comparison["seeds"]) == {2}  # both seeds paired
    # A clone has the runs' records but no weights: the same tables come back from the records alone
    weights = list((tmp_path / "runs").rglob("best.pt"))
    assert len(weights) == 8  # per seed: finetune, fine_pruning and both AdaFilter runs
    for path in weights:
        path.unlink()
    rebuilt_summary, rebuilt_compaction = pruning_bench.run_pruning_bench(**bench)
    pd.testing.assert_frame_equal(rebuilt_summary, summary)
    pd.testing.assert_frame_equal(rebuilt_compaction, compaction, check_dtype=False)


def test_a_failing_trial_is_a_pruned_trial_and_a_round_where_every_trial_fails_fails_the_run(tiny_overrides, monkeypatch):
    from adafilter_lib.core.errors import RunFailed
    from adafilter_lib.pruning.session import Session

    train = Session.train
    calls = {"trials": 0}

    def first_trial_diverges(self, epochs, stream, fractions=None, record=None, **kwargs):
        if record is None:  # a trial (the path phases record their epochs)
            calls["trials"] += 1
            if calls["trials"] == 1 or calls.get("all"):
                raise RunFailed("training loss is not finite")
        return train(self, epochs, stream, fractions=fractions, record=record, **kwargs)

    monkeypatch.setattr(Session, "train", first_trial_diverges)
    base = tiny_overrides + NO_SEARCH_EPOCHS + ["method.name=fine_pruning", "method.fine_pruning.rounds=1"]
    base += ["method.fine_pruning.trials=3", "method.fine_pruning.startup_trials=2", "method.fine_pruning.round_epochs=0"]
    cfg = load_config(None, base)
    run_fine_pruning(cfg, progress=False)
    trials = pd.read_csv(cfg.run_dir() / TRIALS_FILE)
    assert trials["state"].tolist() == ["PRUNED", "COMPLETE", "COMPLETE"]  # the failure is a pruned trial, not a failed run
    calls["all"] = True
    doomed = load_config(None, base + ["seed=1"])
    with pytest.raises(RunFailed, match="every trial of Fine-Pruning round 1 failed") as err:
        run_fine_pruning(doomed, progress=False)
    assert "\n" not in str(err.value) and runs.failure(doomed.run_dir()) is not None  # kept for inspection


def test_the_global_allocation_gives_each_stage_the_fraction_of_one_global_threshold():
    from types import SimpleNamespace

    from adafilter_lib.core.model import build_transfer_model
    from adafilter_lib.pruning import masks
    from adafilter_lib.pruning.search import global_allocation

    cfg = load_config(
        None, ["method.name=fine_pruning", "method.fine_pruning.allocation=global", "method.fine_pruning.target_compression=9"]
    )
    torch.manual_seed(0)
    model = build_transfer_model("resnet18", 5, pretrained=False)
    masks.attach_masks(model)
    groups = masks.layer_groups(model, "stage", cfg.method.fine_pruning.min_layer_weights)
    session = SimpleNamespace(opts=cfg.method.fine_pruning, model=model, groups=groups)
    fractions = global_allocation(session, 2)  # the last of 3 rounds: the whole budget
    eligible = [n for names in groups.values() for n in names]
    expected = masks.global_magnitude_masks(model, 1 - 1 / 9, eligible)
    got = masks.group_masks(model, fractions, groups)
    assert all(torch.equal(got[n], expected[n]) for n in eligible)
    assert max(fractions.values()) - min(fractions.values()) > 0.05  # an allocation, not one fraction everywhere
    assert global_allocation(session, 0)["layer4"] < fractions["layer4"]  # round 1 of 3: 9 ** (1/3)


def test_fine_pruning_with_the_global_allocation_runs_no_trial_and_reaches_the_budget(tiny_overrides):
    cfg = load_config(
        None,
        tiny_overrides
        + NO_SEARCH_EPOCHS
        + [
            "method.name=fine_pruning",
            "method.fine_pruning.rounds=2",
            "method.fine_pruning.round_epochs=1",
            "method.fine_pruning.allocation=global",
            "method.fine_pruning.target_compression=4",
        ],
    )
    summary = run_fine_pruning(cfg, progress=False)
    assert summary["trials"] == 0 and summary["search_epochs"] == 0 and not (cfg.run_dir() / TRIALS_FILE).exists()
    assert summary["compression"] == pytest.approx(4, rel=2e-3)
    with pytest.raises(KitError, match="target_compression"):
        load_config(None, ["method.name=fine_pruning", "method.fine_pruning.allocation=global"])


def test_the_pruning_benchmark_takes_its_seeds_from_seeds_not_from_set(tmp_path):
    from adafilter_lib.core.errors import KitError
    from adafilter_lib.studies import pruning_bench

    with pytest.raises(KitError, match="--seeds"):
        pruning_bench.run_pruning_bench(str(tmp_path / "runs"), str(tmp_path / "out"), "digits", 4, overrides=["seed=1"])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()  # refused before anything is written


def test_front_markdown_lays_targets_by_row_family_with_the_searched_point_last():
    from adafilter_lib.analysis.pruning_front import FRONT_COLUMNS, front_markdown

    nan = math.nan
    front = pd.DataFrame(
        [  # dataset, row, method, target, achieved compression, error, diff, SE, seeds
            ["uc", "fine_pruning_8x", "fine_pruning", 8.0, 8.0, 40.0, 16.11, 0.57, 3],
            ["uc", "fine_pruning_2x", "fine_pruning", 2.0, 2.0, 30.0, 0.4, 1.41, 3],
            ["uc", "gradual_magnitude_2x", "gradual_magnitude", 2.0, 2.0, 28.0, -0.24, 0.84, 3],
            ["uc", "fine_pruning_global_8x", "fine_pruning", 8.0, 8.0, 50.0, 22.22, 2.27, 3],
            ["uc", "fine_pruning", "fine_pruning", nan, 2.82, 30.0, 2.22, nan, 1],
        ],
        columns=["dataset", "row", *FRONT_COLUMNS],
    )
    lines = front_markdown(front).splitlines()
    table = lines[lines.index("| uc | fine_pruning | gradual_magnitude | fine_pruning_global |") :]
    assert table[2:] == [
        "| 2x | +0.40 ± 1.41 | −0.24 ± 0.84 |  |",
        "| 8x | +16.11 ± 0.57 |  | +22.22 ± 2.27 |",
        "| searched | +2.22 (2.82x) |  |  |",
    ]
