"""records: fake run directories with known numbers -> exact tidy frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from adafilter_lib.adafilter.gate_record import GateRecord, save_gate_record
from adafilter_lib.analysis import drift, records
from adafilter_lib.core.errors import KitError


def make_run(root, name, method="adafilter", dataset="digits", seed=0, epochs=2, gated=True):
    run = root / name
    run.mkdir(parents=True)
    cfg = {
        "data": {"dataset": dataset, "n_per_class": 4},
        "model": {"backbone": "resnet18"},
        "method": {"name": method},
        "seed": seed,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "summary.json").write_text(json.dumps({"top1_err": 10.0 + seed}))
    lines = []
    for epoch in range(epochs):
        record = {
            "epoch": epoch,
            "train_loss": 2.0 - epoch,
            "train_top1_err": 50.0 - epoch,
            "val_loss": 3.0 - epoch,
            "val_top1_err": 60.0 - 10 * epoch,
        }
        if gated:
            record.update(val_frac_finetuned=0.5, val_frac_by_layer={"l1": 0.1 * (epoch + 1), "l2": 0.2 * (epoch + 1)})
        lines.append(json.dumps(record))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if gated:
        save_gate_record(
            run,
            {"l1": np.array([[1.0, 0.0], [1.0, 1.0]]), "l2": np.array([[0.0], [1.0]])},
            np.array([0, 1]),
            np.array([0, 0]),
            np.array([0.1, 0.9]),
            ["0", "1"],
        )
        usage = pd.DataFrame(
            {
                "layer": ["l1", "l1", "l1"],
                "layer_index": 0,
                "num_filters": 2,
                "group": ["all", "0", "1"],
                "frac_finetuned": [0.75, 0.5, 1.0],
                "frac_std": [0.25, np.nan, np.nan],
                "images": [2, 1, 1],
            }
        )
        usage.to_csv(run / "gate_usage.csv", index=False)
    return run


@pytest.fixture
def root(tmp_path):
    make_run(tmp_path, "a_ada")
    make_run(tmp_path, "b_ft", method="finetune", gated=False, epochs=3)
    make_run(tmp_path, "c_unfinished.partial")
    return tmp_path


def test_load_metrics_one_row_per_run_and_epoch(root):
    metrics = records.load_metrics(root)
    assert len(metrics) == 2 + 3
    assert list(metrics.columns[:6]) == records.ID_COLUMNS + ["epoch"]
    ft = metrics[metrics.method == "finetune"]
    assert ft["epoch"].tolist() == [1, 2, 3] and ft["val_top1_err"].tolist() == [60.0, 50.0, 40.0]
    assert "val_frac_by_layer" not in metrics.columns  # dicts stay out of the scalar table
    assert metrics.loc[metrics.method == "finetune", "val_frac_finetuned"].isna().all()


def test_curves_long_form(root):
    long = records.curves(records.load_metrics(root), "loss")
    ada = long[long.method == "adafilter"]
    assert ada[["split", "epoch", "loss"]].values.tolist() == [
        ["train", 1, 2.0],
        ["train", 2, 1.0],
        ["val", 1, 3.0],
        ["val", 2, 2.0],
    ]
    with pytest.raises(KitError, match="train_nope"):
        records.curves(records.load_metrics(root), "nope")


def test_usage_over_epochs_from_val_frac_by_layer(root):
    usage = records.usage_over_epochs(root)
    assert set(usage.method) == {"adafilter"}  # the fine-tuning run has no gates
    assert usage[["epoch", "layer", "layer_index"]].values.tolist() == [[1, "l1", 0], [1, "l2", 1], [2, "l1", 0], [2, "l2", 1]]
    np.testing.assert_allclose(usage.frac_finetuned, [0.1, 0.2, 0.2, 0.4])


def test_gate_usage_keeps_class_names_as_strings(root):
    usage = records.load_gate_usage(root)
    assert usage.group.tolist() == ["all", "0", "1"] and usage.run_dir.map(lambda d: d.endswith("a_ada")).all()
    assert usage.frac_std.isna().tolist() == [False, True, True]
    with pytest.raises(KitError, match="gate_usage.csv"):
        records.load_gate_usage(records.as_runs(root).query("method == 'finetune'"))


def test_filter_frequency_and_image_profile():
    record = GateRecord({"l1": np.array([[1.0, 0.0], [1.0, 1.0]]), "l2": np.array([[0.0], [1.0]])}, pd.DataFrame(), ["0", "1"])
    freq = records.filter_frequency(record)
    assert freq[["layer", "layer_index", "filter"]].values.tolist() == [["l1", 0, 0], ["l1", 0, 1], ["l2", 1, 0]]
    np.testing.assert_allclose(freq.frequency, [1.0, 0.5, 0.5])
    profile = records.image_profile(["l1", "l2"], np.array([0.5, 0.0]), np.array([0.6, 0.1]), np.array([0.75, 0.5]))
    assert profile.series.unique().tolist() == ["this image", "class average", "dataset average"]
    np.testing.assert_allclose(profile.frac_finetuned, [0.5, 0.0, 0.6, 0.1, 0.75, 0.5])


def test_gated_runs_runs_of_and_find_run(root, tmp_path_factory):
    assert [p.name for p in records.gated_runs(root)] == ["a_ada"]
    assert records.runs_of([root / "b_ft", root / "c_unfinished", root / "missing"], root).method.tolist() == ["finetune"]
    assert records.runs_of([root / "missing"], root).empty
    assert records.find_run(root, method="finetune").run_dir.endswith("b_ft")
    with pytest.raises(KitError, match="no runs match method=l2sp; runs found: a_ada, b_ft"):
        records.find_run(root, method="l2sp")
    with pytest.raises(KitError, match="2 runs match dataset=digits"):
        records.find_run(root, dataset="digits")
    empty = tmp_path_factory.mktemp("only_finetune")
    make_run(empty, "ft", method="finetune", gated=False)
    with pytest.raises(KitError, match="no finished AdaFilter run"):
        records.gated_runs(empty)


def _save_weights(run, pairs):
    """best.pt with, per layer name, (fine-tuned, pretrained) filter banks of shape (C_out, k)."""
    state = {}
    for name, (finetuned, pretrained) in pairs.items():
        state[f"features.{name}.layer.weight_finetuned"] = torch.tensor(finetuned, dtype=torch.float32)
        state[f"features.{name}.layer.weight_pretrained"] = torch.tensor(pretrained, dtype=torch.float32)
    torch.save(state, run / "best.pt")


def test_filter_drift_and_its_summary_by_selection_band(root):
    run = root / "a_ada"  # frequencies: l1 filters 1.0 and 0.5, l2 filter 0.5
    _save_weights(run, {"l1": ([[3.0, 4.5], [1.0, 0.0]], [[3.0, 4.0], [1.0, 0.0]]), "l2": ([[2.0, 1.0]], [[2.0, 0.0]])})
    table = drift.filter_drift(run)
    np.testing.assert_allclose(table.frequency, [1.0, 0.5, 0.5])
    np.testing.assert_allclose(table.drift, [0.1, 0.0, 0.5], atol=1e-7)  # |(0, .5)| / |(3, 4)|, 0, |(0, 1)| / |(2, 0)|
    bands = drift.drift_by_selection(root)  # the fine-tuning run has no gates and is left out
    assert bands.run_dir.map(lambda d: Path(d).name).unique().tolist() == ["a_ada"]
    assert bands.band.tolist() == [band for band, _, _ in drift.SELECTION_BANDS]
    np.testing.assert_allclose(bands.share, [0.0, 2 / 3, 1 / 3])
    assert np.isnan(bands.median_drift[0])
    np.testing.assert_allclose(bands.median_drift[1:], [0.25, 0.1], atol=1e-7)
    with pytest.raises(KitError, match="finished AdaFilter run"):
        drift.filter_drift(root / "b_ft")


def test_drift_command_writes_the_per_run_table(root, tmp_path, capsys):
    from adafilter_lib.cli.app import main

    _save_weights(
        root / "a_ada", {"l1": ([[3.0, 4.5], [1.0, 0.0]], [[3.0, 4.0], [1.0, 0.0]]), "l2": ([[2.0, 1.0]], [[2.0, 0.0]])}
    )
    out = tmp_path / "drift.csv"
    assert main(["drift", "--runs", str(root), "--out", str(out)]) == 0
    written = pd.read_csv(out)
    np.testing.assert_allclose(written.share, drift.drift_by_selection(root).share)
    assert "almost always (> 95 %)" in capsys.readouterr().out


def test_usage_command_writes_the_per_layer_rows_of_every_gated_run(root, tmp_path, capsys):
    from adafilter_lib.cli.app import main

    out = tmp_path / "usage.csv"
    assert main(["usage", "--runs", str(root), "--out", str(out)]) == 0
    written = pd.read_csv(out)
    assert written.run_dir.map(lambda d: d.endswith("a_ada")).all() and len(written) == 1  # the "all" row only
    assert written[["layer", "frac_finetuned", "frac_std", "images"]].values.tolist() == [["l1", 0.75, 0.25, 2]]
    assert "0.750" in capsys.readouterr().out
    assert main(["usage", "--runs", str(tmp_path / "none")]) == 2  # no gated run: a one-line error
