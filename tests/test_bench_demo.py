"""The bench command's output contract and the demo's grid → table path (on tiny settings)."""

import json

import pandas as pd

from adafilter_lib.cli.app import main
from adafilter_lib.core.method_config import AdaFilterConfig
from adafilter_lib.studies.demo import demo_configs, demo_study, run_demo


def test_bench_prints_the_ratio_line_and_records_the_command(tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "--backbone",
                "resnet18",
                "--res",
                "32",
                "--batch",
                "4",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    train, evaluation = (float(part.split("=")[1]) for part in last.split())
    assert last.startswith("train_step_ratio=") and " eval_step_ratio=" in last and train > 0 and evaluation > 0
    record = json.loads((tmp_path / "resnet18_32px_b4_cpu.json").read_text())
    assert record["train_step_ratio"] == record["train_adafilter_median_s"] / record["train_finetune_median_s"]
    assert record["eval_step_ratio_unfolded"] == record["eval_adafilter_unfolded_median_s"] / record["eval_finetune_median_s"]
    assert "train_adafilter_unfolded_median_s" not in record  # the unfolded copy is timed at evaluation only
    assert "--backbone resnet18" in record["command"]


def test_bench_also_times_an_ablation_in_the_same_run_and_rejects_unknown_methods(tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "--backbone",
                "resnet18",
                "--res",
                "32",
                "--batch",
                "4",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--out",
                str(tmp_path),
                "--also",
                "adafilter_all_finetuned",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("train_step_ratio=") and lines[-2].lstrip().startswith("adafilter_all_finetuned: train step")
    record = json.loads((tmp_path / "resnet18_32px_b4_cpu_adafilter_all_finetuned.json").read_text())
    assert record["also"] == ["adafilter_all_finetuned"] and record["command"].endswith("--also adafilter_all_finetuned")
    assert record["train_step_ratio_adafilter_all_finetuned"] == (
        record["train_adafilter_all_finetuned_median_s"] / record["train_finetune_median_s"]
    )
    assert main(["bench", "--res", "32", "--out", str(tmp_path), "--also", "no_such_method"]) == 2
    assert "unknown method 'no_such_method'" in capsys.readouterr().err
    assert main(["bench-table", "--records", str(tmp_path)]) == 0
    header, rule, row = capsys.readouterr().out.strip().splitlines()
    assert header.endswith("| `adafilter_all_finetuned` train ratio |") and row.count("|") == rule.count("|")
    assert row.endswith(
        f"| {record['train_step_ratio']:.2f} | {record['eval_step_ratio']:.2f} | "
        f"{record['eval_step_ratio_unfolded']:.2f} | {record['train_step_ratio_adafilter_all_finetuned']:.2f} |"
    )
    assert main(["bench-table", "--records", str(tmp_path / "none")]) == 2


def test_bench_set_applies_to_the_timed_models_and_names_the_record(tmp_path, monkeypatch):
    import adafilter_lib.studies.step_time as bench

    seen = []
    build = bench.build_method
    monkeypatch.setattr(bench, "build_method", lambda cfg: seen.append(cfg.method.adafilter.bn_pretrained) or build(cfg))
    assert (
        main(
            [
                "bench",
                "--backbone",
                "resnet18",
                "--res",
                "32",
                "--batch",
                "2",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--out",
                str(tmp_path),
                "--set",
                "method.adafilter.bn_pretrained=frozen",
            ]
        )
        == 0
    )
    assert seen == ["frozen", "frozen"]  # fine-tuning and AdaFilter
    record = json.loads((tmp_path / "resnet18_32px_b2_cpu_bn_pretrained-frozen.json").read_text())
    assert record["set"] == ["method.adafilter.bn_pretrained=frozen"] and record["command"].endswith(
        "--set method.adafilter.bn_pretrained=frozen"
    )


def test_demo_grid_covers_every_dataset_method_and_seed(tmp_path):
    methods = [r.name for r in demo_study().rows]
    assert methods == ["scratch", "linear_probe", "finetune", "l2sp", "adafilter", "adafilter_random"]
    configs = demo_configs(str(tmp_path), seeds=(0, 1))
    assert len(configs) == 3 * 2 * len(methods)
    assert {(c.data.dataset, c.method.name, c.seed) for c in configs} == {
        (d, m, s) for d in ("mnist5k", "digits", "uc_merced") for m in methods for s in (0, 1)
    }
    assert {(c.data.dataset, c.data.n_per_class) for c in configs} == {("mnist5k", 20), ("digits", 10), ("uc_merced", 10)}
    assert all(c.model.backbone == "efficientnet_lite0" and c.model.pretrained for c in configs)
    # where `demo` puts them: <runs>/<method>/<recipe>/<run>, so the notebooks reuse the demo's runs
    assert configs[0].run_dir() == tmp_path / "scratch" / "default" / "mnist5k__scratch__efficientnet_lite0__s0"


def test_demo_adafilter_recipes_and_overrides_win(tmp_path):
    study = demo_study(str(tmp_path), datasets=["digits"], methods=["finetune", "adafilter", "adafilter_random"])
    ada = next(r for r in study.rows if r.name == "adafilter")
    assert list(ada.cells) == ["gates_adamw", "defaults"]  # both trained; the row shows the one validation prefers
    by_method = {
        c.method.name: c.method.adafilter
        for c in demo_configs(str(tmp_path), methods=["finetune", "adafilter", "adafilter_random"], datasets=(("digits", 10),))
    }
    recipe = by_method["adafilter"]
    assert (recipe.gate_optimizer, recipe.gate_lr, recipe.gate_warmup_epochs, recipe.gate_bias_init, recipe.bn_pretrained) == (
        "adamw",
        0.01,
        2,
        0.5,
        "stats",
    )
    assert by_method["finetune"] == by_method["adafilter_random"] == AdaFilterConfig()
    # a caller's --set comes last: here it restores the library default of one option
    back = demo_configs(
        str(tmp_path), methods=("adafilter",), datasets=(("digits", 10),), overrides=["method.adafilter.gate_bias_init=0.0"]
    )[0].method.adafilter
    assert back.gate_bias_init == 0.0 and back.gate_optimizer == "adamw"
    only = demo_study(str(tmp_path), adafilter_recipes=["defaults"])
    assert list(next(r for r in only.rows if r.name == "adafilter").cells) == ["defaults"]


def test_demo_chooses_the_adafilter_recipe_on_validation_and_writes_the_tables(tmp_path, capsys):
    tiny = [
        "model.backbone=resnet18",
        "model.pretrained=false",
        "optim.chance_loss_factor=0",
        "data.resolution=32",
        "optim.epochs=1",
        "data.n_per_class=3",
    ]
    study = demo_study(
        str(tmp_path / "runs"),
        str(tmp_path / "out"),
        datasets=["digits"],
        methods=["linear_probe", "finetune", "adafilter"],
        overrides=tiny,
    )
    run_demo(study, progress=False)
    table = pd.read_csv(tmp_path / "out" / "error_table.csv")
    assert list(table.columns) == ["method", "dataset", "top1_err", "top1_err_std", "seeds"]
    assert table["method"].tolist() == ["linear_probe", "finetune", "adafilter"] and set(table["dataset"]) == {"digits"}
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    ada = cells[cells["row"] == "adafilter"].set_index("cell")
    assert set(ada.index) == {"gates_adamw", "defaults"}
    picked = ada[ada["chosen"]].index[0]
    assert ada.loc[picked, "val_top1_err"] == ada["val_top1_err"].min()  # chosen on validation, never on test
    assert table.set_index("method").loc["adafilter", "top1_err"] == ada.loc[picked, "top1_err"]
    out = capsys.readouterr().out
    assert "| linear_probe" in out and f"recipe '{picked}'" in out
    for name in ("error_table.md", "comparison.md", "val_top1_err_table.csv", "test_frac_finetuned_table.csv", "README.md"):
        assert (tmp_path / "out" / name).exists(), name


def test_demo_command_applies_set_overrides_to_every_run(tmp_path, capsys):
    from adafilter_lib.core.config import load_config

    runs = tmp_path / "runs"
    assert (
        main(
            [
                "demo",
                "--runs",
                str(runs),
                "--out",
                str(tmp_path / "out"),
                "--methods",
                "finetune",
                "--no-progress",
                "--datasets",
                "mnist5k",
                "digits",
                "--set",
                "model.backbone=resnet18",
                "model.pretrained=false",
                "optim.chance_loss_factor=0",
                "data.resolution=32",
                "optim.epochs=1",
                "data.n_per_class=2",
            ]
        )
        == 0
    )
    configs = [load_config(d / "config.yaml") for d in sorted((runs / "finetune" / "default").iterdir())]
    assert {c.data.dataset for c in configs} == {"mnist5k", "digits"}
    assert all(
        (c.model.backbone, c.data.resolution, c.optim.epochs, c.data.n_per_class) == ("resnet18", 32, 1, 2) for c in configs
    )


def test_demo_command_library_defaults_flag_trains_only_the_library_recipe(tmp_path):
    from adafilter_lib.core.config import load_config

    runs = tmp_path / "runs"
    assert (
        main(
            [
                "demo",
                "--runs",
                str(runs),
                "--out",
                str(tmp_path / "out"),
                "--methods",
                "adafilter",
                "--no-progress",
                "--library-defaults",
                "--datasets",
                "digits",
                "--set",
                "model.backbone=resnet18",
                "model.pretrained=false",
                "optim.chance_loss_factor=0",
                "data.resolution=32",
                "optim.epochs=1",
                "data.n_per_class=2",
            ]
        )
        == 0
    )
    assert [p.name for p in (runs / "adafilter").iterdir()] == ["defaults"]
    assert [load_config(d / "config.yaml").method.adafilter for d in sorted((runs / "adafilter" / "defaults").iterdir())] == [
        AdaFilterConfig()
    ]
    assert main(["demo", "--datasets", "digitz"]) == 2


def test_bench_writes_to_a_user_folder_by_default_not_the_committed_records():
    from adafilter_lib.cli.app import build_parser

    assert build_parser().parse_args(["bench"]).out == "runs/bench"
