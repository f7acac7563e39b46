"""results: fake run directories with known numbers -> exact tables and files."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

from adafilter_lib.analysis.results import (
    build_tables,
    error_table,
    export_table,
    latex_table,
    load_runs,
    markdown_table,
    wide_table,
)
from adafilter_lib.cli import app as cli
from adafilter_lib.core.errors import KitError

# (method, dataset) -> test errors of seeds 0, 1, 2, ...
ERRORS = {
    ("finetune", "cub_200"): [10.0, 12.0, 14.0],  # mean 12, std 2
    ("finetune", "mnist5k"): [2.0, 4.0],  # mean 3, std sqrt(2)
    ("adafilter", "cub_200"): [8.0, 9.0],  # mean 8.5, std sqrt(0.5)
    ("adafilter", "mnist5k"): [3.5, 3.5, 3.5],  # mean 3.5, std 0
}


def make_run(root, name, method, dataset, seed, top1_err, summary=True, backbone="resnet18", optim=None, **extra):
    run = root / name
    run.mkdir(parents=True)
    cfg = {
        "data": {"dataset": dataset, "n_per_class": 30},
        "model": {"backbone": backbone},
        "method": {"name": method, "l2sp": {"alpha": 0.1}},
        "optim": optim or {},
        "seed": seed,
        "runs_root": str(root),
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    if summary:
        record = {"top1_err": top1_err, "val_top1_err": top1_err + 1, "best_epoch": 3, "epochs": 5, "train_seconds": 1.5, **extra}
        (run / "summary.json").write_text(json.dumps(record))
    return run


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    for (method, dataset), errs in ERRORS.items():
        for seed, err in enumerate(errs):
            extra = {"frac_finetuned": 0.25} if method == "adafilter" else {}
            make_run(root / "sub", f"{dataset}__{method}__s{seed}", method, dataset, seed, err, **extra)
    # Not finished: a staging dir (even one that looks complete, and a run nested in it) and a killed run.
    staging = make_run(root, "cub_200__finetune__s9.partial", "finetune", "cub_200", 9, 99.0)
    make_run(staging, "nested", "finetune", "cub_200", 8, 99.0)
    make_run(root, "cub_200__finetune__s7", "finetune", "cub_200", 7, 99.0, summary=False)
    return root


def test_load_runs_skips_partial_and_unfinished(runs_root):
    runs = load_runs(runs_root)
    assert len(runs) == sum(len(v) for v in ERRORS.values()) == 10
    assert not runs["run_dir"].str.contains(".partial", regex=False).any()
    assert 99.0 not in set(runs["top1_err"])
    assert list(runs.columns[:6]) == ["run_dir", "method", "dataset", "backbone", "seed", "n_per_class"]
    assert {"top1_err", "val_top1_err", "best_epoch", "epochs", "train_seconds", "frac_finetuned"} <= set(runs.columns)
    # Deterministic order: method, dataset, seed.
    keys = list(zip(runs["method"], runs["dataset"], runs["seed"]))
    assert keys == sorted(keys)
    assert runs.loc[runs["method"] == "finetune", "frac_finetuned"].isna().all()
    assert (runs["n_per_class"] == 30).all()


def test_error_table_exact_values_and_order(runs_root):
    table = error_table(load_runs(runs_root), method_order=["finetune"])
    assert list(table.columns) == ["method", "dataset", "top1_err", "top1_err_std", "seeds"]
    assert list(zip(table["method"], table["dataset"])) == [
        ("finetune", "cub_200"),
        ("finetune", "mnist5k"),
        ("adafilter", "cub_200"),
        ("adafilter", "mnist5k"),
    ]
    row = table.set_index(["method", "dataset"])
    assert row.loc[("finetune", "cub_200"), "top1_err"] == 12.0
    assert row.loc[("finetune", "cub_200"), "top1_err_std"] == 2.0
    assert math.isclose(row.loc[("finetune", "mnist5k"), "top1_err_std"], math.sqrt(2))
    assert row.loc[("adafilter", "mnist5k"), "top1_err_std"] == 0.0
    assert list(table["seeds"]) == [3, 2, 2, 3]
    # Without an order, methods are alphabetical; unknown methods go after the listed ones.
    assert list(error_table(load_runs(runs_root))["method"].unique()) == ["adafilter", "finetune"]
    assert list(error_table(load_runs(runs_root), method_order=["l2sp", "finetune"])["method"].unique()) == [
        "finetune",
        "adafilter",
    ]


def test_single_seed_std_is_nan_and_rendered_without_pm(tmp_path):
    make_run(tmp_path, "a", "finetune", "cub_200", 0, 10.0)
    make_run(tmp_path, "b", "adafilter", "cub_200", 0, 9.0)
    make_run(tmp_path, "c", "adafilter", "cub_200", 1, 11.0)
    table = error_table(load_runs(tmp_path))
    assert math.isnan(table.set_index("method").loc["finetune", "top1_err_std"])
    wide = wide_table(table)
    assert wide.loc["finetune", "cub_200"] == "10.00"
    assert "average" not in wide.columns  # one dataset: nothing to average
    assert markdown_table(table).splitlines()[0] == (
        "Top-1 test error (%), mean ± std over seeds (1–2 seeds per cell; a dataset cell without ± is one run)."
    )


def test_wide_table_cells(runs_root):
    wide = wide_table(error_table(load_runs(runs_root), method_order=["finetune", "adafilter"]))
    assert list(wide.index) == ["finetune", "adafilter"]
    assert list(wide.columns) == ["cub_200", "mnist5k", "average"]
    assert wide.loc["finetune", "cub_200"] == "12.00 ± 2.00"
    assert wide.loc["finetune", "mnist5k"] == "3.00 ± 1.41"
    assert wide.loc["adafilter", "cub_200"] == "8.50 ± 0.71"
    assert wide.loc["finetune", "average"] == "7.50"
    assert wide.loc["adafilter", "average"] == "6.00"


def test_missing_cell_is_a_dash_and_has_no_average(tmp_path):
    make_run(tmp_path, "a", "finetune", "cub_200", 0, 10.0)
    make_run(tmp_path, "b", "finetune", "mnist5k", 0, 2.0)
    make_run(tmp_path, "c", "adafilter", "cub_200", 0, 9.0)
    wide = wide_table(error_table(load_runs(tmp_path)))
    assert wide.loc["adafilter", "mnist5k"] == "–"
    assert wide.loc["adafilter", "average"] == "–"
    assert wide.loc["finetune", "average"] == "6.00"


def test_export_files(runs_root, tmp_path):
    out = tmp_path / "results"
    table = build_tables(runs_root, out, method_order=["finetune", "adafilter"])
    assert sorted(p.name for p in out.iterdir()) == ["error_table.csv", "error_table.md", "error_table.tex"]
    csv = pd.read_csv(out / "error_table.csv")
    assert (out / "error_table.csv").read_text().splitlines()[0] == "method,dataset,top1_err,top1_err_std,seeds"
    assert math.isclose(csv.loc[1, "top1_err_std"], math.sqrt(2))  # not rounded in the CSV
    md = (out / "error_table.md").read_text()
    assert md.splitlines()[0] == (
        "Top-1 test error (%), mean ± std over seeds (2–3 seeds per cell; average = mean over datasets)."
    )
    assert "| finetune  | 12.00 ± 2.00 |" in md
    assert md == markdown_table(table)
    tex = (out / "error_table.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex
    assert r"cub\_200" in tex and "cub_200" not in tex.replace(r"cub\_200", "")
    # Lowest error per column is bold: adafilter on cub_200 and on the average, finetune on mnist5k.
    assert r"adafilter & \textbf{8.50} $\pm$ 0.71 & 3.50 $\pm$ 0.00 & \textbf{6.00} \\" in tex
    assert r"finetune & 12.00 $\pm$ 2.00 & \textbf{3.00} $\pm$ 1.41 & 7.50 \\" in tex
    assert tex == latex_table(table)


def test_export_overwrites_and_leaves_no_temp_files(runs_root, tmp_path):
    table = error_table(load_runs(runs_root))
    out = tmp_path / "out"
    export_table(table, out, stem="t")
    paths = export_table(table, out, stem="t")
    assert {k: p.name for k, p in paths.items()} == {"csv": "t.csv", "md": "t.md", "tex": "t.tex"}
    assert sorted(p.name for p in out.iterdir()) == ["t.csv", "t.md", "t.tex"]


@pytest.mark.parametrize("make", ["empty", "missing", "only_partial"])
def test_no_runs_is_a_one_line_kit_error(tmp_path, make):
    root = tmp_path / "runs"
    if make != "missing":
        root.mkdir()
    if make == "only_partial":
        make_run(root, "x.partial", "finetune", "cub_200", 0, 10.0)
    with pytest.raises(KitError) as info:
        load_runs(root)
    message = str(info.value)
    assert "\n" not in message and str(root) in message and "python -m adafilter_lib train" in message


def test_mixed_backbones_and_repeated_seeds_are_refused(tmp_path):
    make_run(tmp_path / "a", "r1", "finetune", "cub_200", 0, 10.0, backbone="resnet18")
    make_run(tmp_path / "a", "r2", "finetune", "cub_200", 1, 11.0, backbone="resnet50")
    with pytest.raises(KitError, match="backbone"):
        error_table(load_runs(tmp_path / "a"))
    table = build_tables(tmp_path / "a", tmp_path / "out", where={"backbone": "resnet50"})
    assert list(table["seeds"]) == [1]
    make_run(tmp_path / "b", "r1", "finetune", "cub_200", 0, 10.0)
    make_run(tmp_path / "b", "r1-again", "finetune", "cub_200", 0, 11.0)
    with pytest.raises(KitError, match="seed 0"):
        error_table(load_runs(tmp_path / "b"))


def test_unknown_metric_lists_numeric_columns(runs_root):
    with pytest.raises(KitError, match="val_top1_err"):
        error_table(load_runs(runs_root), metric="top5_err")
    table = error_table(load_runs(runs_root), metric="val_top1_err")
    assert list(table.columns) == ["method", "dataset", "val_top1_err", "val_top1_err_std", "seeds"]
    assert markdown_table(table).startswith("Top-1 validation error (%)")


def test_a_gate_metric_table_sits_beside_the_error_table_without_bold(tmp_path):
    for seed, (err, frac) in enumerate([(10.0, 0.25), (12.0, 0.75)]):
        make_run(tmp_path / "runs", f"a{seed}", "adafilter", "digits", seed, err, test_frac_finetuned=frac)
        make_run(tmp_path / "runs", f"f{seed}", "finetune", "digits", seed, err + 1)
    out = tmp_path / "out"
    build_tables(tmp_path / "runs", out)
    table = build_tables(tmp_path / "runs", out, metric="test_frac_finetuned")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}.{ext}" for stem in ("error_table", "test_frac_finetuned_table") for ext in ("csv", "md", "tex")
    )
    assert table.method.tolist() == ["adafilter"]  # fine-tuning runs have no gate fraction
    assert math.isclose(table.test_frac_finetuned[0], 0.5) and math.isclose(table.test_frac_finetuned_std[0], math.sqrt(0.125))
    assert (out / "test_frac_finetuned_table.md").read_text().startswith("Fraction of gate choices that picked the fine-tuned")
    assert r"\textbf" not in (out / "test_frac_finetuned_table.tex").read_text()
    assert r"\textbf{11.00}" in (out / "error_table.tex").read_text()


def test_table_command_says_which_unfinished_runs_it_left_out(runs_root, tmp_path, capsys):
    from adafilter_lib.cli.app import main

    assert main(["table", "--runs", str(runs_root), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "note: 1 unfinished run(s) left out of the table (cub_200__finetune__s9.partial)" in err


def test_table_reference_writes_differences_paired_by_seed(runs_root, tmp_path, capsys):
    from adafilter_lib.cli.app import main

    out = tmp_path / "tables"
    assert main(["table", "--runs", str(runs_root), "--out", str(out), "--reference", "finetune"]) == 0
    table = pd.read_csv(out / "comparison.csv").set_index(["row", "dataset"])
    assert list(table.index) == [
        ("finetune", "cub_200"),
        ("adafilter", "cub_200"),
        ("finetune", "mnist5k"),
        ("adafilter", "mnist5k"),
    ]
    cub = table.loc[("adafilter", "cub_200")]  # seeds 0, 1: 8 - 10 and 9 - 12
    assert (cub["diff_vs_reference"], cub["diff_se"], cub["wins"]) == (pytest.approx(-2.5), pytest.approx(0.5), "2/2")
    mnist = table.loc[("adafilter", "mnist5k")]  # seed 2 has no fine-tuning run: left out of the pairs
    assert (mnist["diff_vs_reference"], mnist["diff_se"], mnist["wins"]) == (pytest.approx(0.5), pytest.approx(1.0), "1/2")
    assert math.isnan(table.loc[("finetune", "cub_200"), "diff_vs_reference"])
    assert "-2.50 ± 0.50" in (out / "comparison.md").read_text()
    assert main(["table", "--runs", str(runs_root), "--out", str(out), "--reference", "l2sp"]) == 2
    assert "reference method 'l2sp' has no finished run here; choose one of" in capsys.readouterr().err


def test_runs_of_other_settings_are_separate_rows_never_one_mean(tmp_path, capsys):
    make_run(tmp_path, "a", "finetune", "digits", 0, 10.0, optim={"lr": 0.01})
    make_run(tmp_path, "b", "finetune", "digits", 1, 90.0, optim={"lr": 0.02, "epochs": 3})
    make_run(tmp_path, "c", "finetune", "digits", 1, 12.0, optim={"lr": 0.01})
    make_run(tmp_path, "d", "l2sp", "digits", 0, 20.0, optim={"lr": 0.01})
    table = error_table(load_runs(tmp_path)).set_index("method")
    assert table.loc["finetune (optim.epochs=10, optim.lr=0.01)", "top1_err"] == pytest.approx(11.0)
    assert table.loc["finetune (optim.epochs=3, optim.lr=0.02)", "top1_err"] == 90.0
    assert table.loc["l2sp", "seeds"] == 1 and len(table) == 3  # one setting: the plain name
    # the same settings in another runs folder, device or run name are one cell
    make_run(tmp_path / "other", "e", "l2sp", "digits", 1, 22.0, optim={"lr": 0.01})
    assert error_table(load_runs(tmp_path)).set_index("method").loc["l2sp", "seeds"] == 2
    assert cli.main(["table", "--runs", str(tmp_path), "--out", str(tmp_path / "t"), "--reference", "l2sp"]) == 0
    comparison = pd.read_csv(tmp_path / "t" / "comparison.csv")
    assert "finetune (optim.epochs=10, optim.lr=0.01)" in comparison["row"].tolist()


def test_table_reference_that_does_not_exist_writes_nothing(runs_root, tmp_path, capsys):
    assert cli.main(["table", "--runs", str(runs_root), "--out", str(tmp_path / "t"), "--reference", "nosuch"]) == 2
    assert "reference method 'nosuch'" in capsys.readouterr().err and not (tmp_path / "t").exists()
