"""Selection studies: cells from the recipe, the choice on validation only, other seeds at the chosen cell, tables."""

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from adafilter_lib.cli import app as cli
from adafilter_lib.core.errors import KitError
from adafilter_lib.studies.recipe import expand_cells, load_study
from adafilter_lib.studies.tune import choose_cell, run_study, selection_runs
from adafilter_lib.studies.tune_tables import write_tables
from adafilter_lib.training.trainer import fit

TINY = [
    "data.n_per_class=4",
    "data.val_fraction=0.25",
    "data.resolution=32",
    "data.batch_size=8",
    "model.backbone=resnet18",
    "model.pretrained=false",
    "optim.chance_loss_factor=0",  # random weights: mechanics, not learning
    "optim.epochs=1",
    "device=cpu",
]


DROP = object()  # a recipe change that removes the key


def _recipe(tmp_path, **changes) -> str:
    spec = {
        "set": TINY,
        "datasets": {"digits": 4},
        "seeds": [0, 1],
        "select": "first",
        "reference": "finetune",
        "runs": str(tmp_path / "runs"),
        "out": str(tmp_path / "out"),
        "rows": {
            "finetune": {"grid": {"optim.lr": [0.001, 0.05]}},
            "adafilter_x": {
                "method": "adafilter",
                "set": ["method.adafilter.hidden=8"],
                "variants": {"plain": [], "warm": ["method.adafilter.gate_warmup_epochs=1"]},
            },
        },
    }
    spec.update(changes)
    spec = {key: value for key, value in spec.items() if value is not DROP}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_cells_are_the_product_of_variants_and_grid_in_recipe_order():
    cells = expand_cells({"optim.lr": [0.01, 0.02], "method.adafilter.gate_lr": [0.1]}, {"a": ["x=1"], "b": []})
    assert list(cells) == ["a_lr0.01_gate_lr0.1", "a_lr0.02_gate_lr0.1", "b_lr0.01_gate_lr0.1", "b_lr0.02_gate_lr0.1"]
    assert cells["a_lr0.02_gate_lr0.1"] == ("x=1", "optim.lr=0.02", "method.adafilter.gate_lr=0.1")
    assert expand_cells(None, None) == {"default": ()}


def test_choice_is_lowest_val_error_then_val_loss_then_recipe_order():
    assert choose_cell({"a": (10.0, 0.5), "b": (5.0, 0.9), "c": (5.0, 0.9)}) == "b"
    assert choose_cell({"a": (5.0, 0.7), "b": (5.0, 0.6)}) == "b"
    assert choose_cell({"a": (5.0, 0.6), "b": (5.0, 0.6)}) == "a"


def test_choice_never_prefers_a_failed_cell_or_a_nan_loss():
    assert choose_cell({"lr1e30": None, "lr0.01": (90.0, 2.3)}) == "lr0.01"
    assert choose_cell({"a": (90.0, math.nan), "b": (90.0, 2.3)}) == "b"  # a NaN loss ranks last, whatever the order
    assert choose_cell({"a": None, "b": None}) is None


@pytest.mark.parametrize(
    "changes, fragment",
    [
        (
            {"rows": {"finetune": {"grdi": {"optim.lr": [0.01, 0.02]}}}},
            "unknown key 'grdi' in 'rows.finetune' (did you mean 'grid'?)",
        ),
        (
            {"datasets": {"digits": {"n_per_clas": 5}}},
            "unknown key 'n_per_clas' in 'datasets.digits' (did you mean 'n_per_class'?)",
        ),
        ({"seed": [0]}, "unknown key 'seed' in the recipe's top level (did you mean 'seeds'?)"),
        ({"datasets": DROP}, "the recipe's top level has no 'datasets' key; add it"),
        ({"rows": ["finetune"]}, "'rows' must be a non-empty mapping"),
        ({"rows": {"finetune": {"grid": {"optim.lr": 0.01}}}}, "'rows.finetune.grid.optim.lr' must be a non-empty list"),
        ({"seeds": "abc"}, "'seeds' must be a list of whole numbers"),
        ({"set": "optim.lr=0.1"}, "'set' must be a list of key=value settings"),
        ({"datasets": {"digits": "five"}}, "'datasets.digits' must be a number of images per class"),
        ({"rows": {"finetune": {"grid": {"optim.lr": [math.inf]}}}}, "cell 'lrinf': config value 'optim.lr' must be a finite"),
        ({"rows": {"finetune": {"set": ["optim.lr=["]}}}, "override 'optim.lr=[': the value is not valid YAML"),
    ],
)
def test_recipe_mistakes_are_refused_with_the_file_and_the_key(tmp_path, changes, fragment):
    path = _recipe(tmp_path, **changes)
    with pytest.raises(KitError) as err:
        load_study(path)
    assert str(err.value).startswith(f"study recipe '{path}': ") and fragment in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_a_failed_cell_is_recorded_and_never_chosen(tmp_path):
    grid = {"finetune": {"grid": {"optim.lr": [1e30, 0.01]}, "set": ["optim.head_lr=0.05"]}}
    study = load_study(_recipe(tmp_path, rows=grid, seeds=[0]))
    chosen = run_study(study, progress=False)
    assert chosen == {("finetune", "digits"): "lr0.01"}
    records = pd.DataFrame(selection_runs(study, chosen)).set_index("cell")
    assert records.loc["lr1e+30", "status"] == "failed" and "optim.lr" in records.loc["lr1e+30", "failure"]
    assert math.isnan(records.loc["lr1e+30", "top1_err"]) and records.loc["lr0.01", "status"] == "finished"
    table = write_tables(study, selection_runs(study, chosen), "tune")
    assert table["cell"].tolist() == ["lr0.01"]
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert cells.set_index("cell").loc["lr1e+30", "status"] == "failed"
    assert run_study(study, progress=False) == chosen  # a second run repeats nothing: the failure is recorded


def test_recipe_errors_are_one_line(tmp_path):
    with pytest.raises(KitError, match="reference"):
        load_study(_recipe(tmp_path, reference="nope"))
    with pytest.raises(KitError, match="select"):
        load_study(_recipe(tmp_path, select="best"))
    with pytest.raises(KitError, match="optim.lrr"):
        load_study(_recipe(tmp_path, rows={"finetune": {"grid": {"optim.lrr": [0.1]}}}))
    with pytest.raises(KitError, match="not found"):
        load_study(tmp_path / "missing.yaml")


def test_study_chooses_on_the_first_seed_trains_others_at_the_choice_and_reuses_runs(tmp_path):
    recipe = tmp_path / "study.yaml"
    recipe.write_text("# A tiny study.\n#   Command:  tune study.yaml\n" + Path(_recipe(tmp_path)).read_text())
    study = load_study(recipe)
    assert study.about == "A tiny study.\n  Command:  tune study.yaml"  # the header comment, indentation kept
    calls = []

    def counting_fit(cfg, resume=False, progress=False):
        calls.append(str(cfg.run_dir()))
        return fit(cfg, resume=resume, progress=False)

    chosen = run_study(study, progress=False, fit=counting_fit)
    records = pd.DataFrame(selection_runs(study, chosen))
    # 2 cells x seed 0 per row, then seed 1 at the chosen cell only: 3 runs per row
    assert len(records) == 6 and set(records.groupby("row").size()) == {3}
    for row in ("finetune", "adafilter_x"):
        seed0 = records[(records.row == row) & (records.seed == 0)].set_index("cell")
        assert (
            chosen[(row, "digits")] == choose_cell({c: (seed0.loc[c, "val_top1_err"], 0.0) for c in seed0.index})
            or seed0["val_top1_err"].nunique() == 1
        )  # equal errors: decided by the validation loss
        seed1 = records[(records.row == row) & (records.seed == 1)]
        assert seed1["cell"].tolist() == [chosen[(row, "digits")]]
    table = write_tables(study, selection_runs(study, chosen), "python -m adafilter_lib tune study.yaml")
    ada = table.set_index("row").loc["adafilter_x"]
    picked = records[records.chosen]
    diffs = (
        picked[picked.row == "adafilter_x"].set_index("seed")["top1_err"]
        - picked[picked.row == "finetune"].set_index("seed")["top1_err"]
    )
    assert ada["diff_vs_reference"] == pytest.approx(diffs.mean())
    assert ada["diff_se"] == pytest.approx(diffs.std(ddof=1) / math.sqrt(2))
    assert (
        0.0 <= ada["test_frac_finetuned"] <= 1.0 and "test_frac_finetuned" not in table.set_index("row").loc["finetune"].dropna()
    )
    out = tmp_path / "out"
    for name in (
        "cells.csv",
        "comparison.csv",
        "comparison.md",
        "README.md",
        "finetune/error_table.csv",
        "finetune/val_top1_err_table.csv",
        "adafilter_x/test_frac_finetuned_table.csv",
        "adafilter_x/test_frac_adaptive_filters_table.csv",
    ):
        assert (out / name).is_file(), name
    # what a user who trusts validation ships: ranked on seed 1, which did not choose the cells (seed 0's error is a
    # minimum over each row's grid)
    held_back = records[records.chosen & (records.seed == 1)].set_index("row")["val_top1_err"]
    shipped = table.set_index("row").loc[held_back.idxmin()]
    line = f"- digits: `{held_back.idxmin()}` (`{shipped['cell']}`), validation error {held_back.min():.2f} %"
    assert (
        line in (out / "comparison.md").read_text()
        and "over the seeds that did not choose it" in (out / "comparison.md").read_text()
    )
    readme = (out / "README.md").read_text()
    assert "validation error of seed 0 alone" in readme and "```text\nA tiny study.\n  Command:  tune study.yaml\n```" in readme
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("summary.json")}
    assert run_study(study, progress=False, fit=counting_fit) == chosen  # a second call trains nothing new
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("summary.json")} == stamps


def test_tune_cli_dry_run_and_tables_only_on_an_unfinished_study(tmp_path, capsys):
    recipe = _recipe(tmp_path)
    assert cli.main(["tune", recipe, "--dry-run"]) == 0
    assert "to do" in capsys.readouterr().out
    assert cli.main(["tune", recipe, "--rows", "nope"]) == 2
    assert "unknown row" in capsys.readouterr().err
    assert cli.main(["tune", recipe, "--tables-only"]) == 2  # nothing trained yet: one line, no traceback
    assert "no run of this study has finished" in capsys.readouterr().err


def test_method_grid_lays_runs_flat_in_grid_order_with_per_task_bases_and_the_callers_set_last(tmp_path):
    from adafilter_lib.studies.recipe import grid, method_grid

    base = tmp_path / "digits.yaml"
    base.write_text(yaml.safe_dump({"optim": {"lr": 0.3}, "data": {"resolution": 48}}))
    study = method_grid(
        tmp_path / "runs",
        ["finetune", "adafilter"],
        {"digits": 4, "mnist5k": None},
        [0, 1],
        settings=[*TINY, "optim.head_lr=0.2"],
        overrides=["optim.head_lr=0.7"],
        dataset_bases={"digits": base},
    )
    configs = grid(study)
    assert [(c.data.dataset, c.seed, c.method.name) for c in configs] == [
        (d, s, m) for d in ("digits", "mnist5k") for s in (0, 1) for m in ("finetune", "adafilter")
    ]
    assert all(c.run_dir() == tmp_path / "runs" / c.resolved_run_name() for c in configs)  # flat: no <row>/<cell>/
    digits, mnist = configs[0], configs[-1]
    assert (digits.optim.lr, digits.data.n_per_class) == (0.3, 4)  # its own base, then the study's n_per_class
    assert digits.data.resolution == 32  # the study's settings come after the base
    assert (mnist.optim.lr, mnist.data.n_per_class) == (0.01, None)  # no base: library defaults
    assert {c.optim.head_lr for c in configs} == {0.7}  # the caller's --set wins over the study's settings
    with pytest.raises(KitError, match="unknown backbone 'resnet81'"):
        method_grid(tmp_path, ["finetune"], {"digits": 4}, [0], settings=["model.backbone=resnet81"])


def _take_recipe(tmp_path, take):
    path = Path(_recipe(tmp_path, seeds=[0]))
    spec = yaml.safe_load(path.read_text())
    spec["rows"] = {  # in this order: a row takes from one listed before it
        "finetune": {},
        "surgical": {"grid": {"method.surgical.stage": ["layer1", "layer4"]}},
        "adafilter_in_stage": {"method": "adafilter", "set": ["method.adafilter.hidden=8"], "take": take},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def test_a_row_takes_the_stage_that_validation_chose_for_an_earlier_row(tmp_path):
    take = {"row": "surgical", "settings": {"method.surgical.stage": "method.adafilter.gated_stage"}}
    study = load_study(_take_recipe(tmp_path, take))
    chosen = run_study(study, progress=False)
    stage = {"stagelayer1": "layer1", "stagelayer4": "layer4"}[chosen[("surgical", "digits")]]
    records = [r for r in selection_runs(study, chosen) if r["row"] == "adafilter_in_stage"]
    assert len(records) == 1 and records[0]["chosen"]
    config = yaml.safe_load((Path(records[0]["run_dir"]) / "config.yaml").read_text())
    assert config["method"]["adafilter"]["gated_stage"] == stage
    assert f"/adafilter_in_stage/gated_stage{stage}_default/" in records[0]["run_dir"]  # the taken stage names the folder
    again = load_study(_take_recipe(tmp_path, take))  # a fresh reading finds the same runs from the records alone
    assert [r["run_dir"] for r in selection_runs(again, chosen) if r["row"] == "adafilter_in_stage"] == [records[0]["run_dir"]]
    # the stage surgical chose, beside the gated row's fine-tuned share per stage (only its one stage is gated)
    all_runs = selection_runs(study, chosen)
    write_tables(study, all_runs, "test")
    table = pd.read_csv(tmp_path / "out" / "stage_choice.csv")
    assert table["stage"].tolist() == ["layer1", "layer4"] and table.set_index("stage")["chosen"].to_dict() == {
        "layer1": stage == "layer1",
        "layer4": stage == "layer4",
    }
    surgical_val = {r["cell"][len("stage") :]: r["val_top1_err"] for r in all_runs if r["row"] == "surgical"}
    assert table.set_index("stage")["surgical_val_top1_err"].to_dict() == pytest.approx(surgical_val)
    shares = table.set_index("stage")["frac_finetuned_adafilter_in_stage"]
    assert 0 <= shares[stage] <= 1 and shares.drop(stage).isna().all()
    assert (tmp_path / "out" / "stage_choice.png").stat().st_size > 0


@pytest.mark.parametrize(
    "take, fragment",
    [
        ({"row": "nosuch", "settings": {"a": "b"}}, "takes settings from 'nosuch', which must be a row listed before it"),
        (
            {"row": "surgical", "settings": {"method.surgical.stag": "method.adafilter.gated_stage"}},
            "no setting 'method.surgical.stag'",
        ),
        ({"row": "surgical"}, "'rows.adafilter_in_stage.take' has no 'settings'"),
    ],
)
def test_a_bad_take_is_refused_before_anything_trains(tmp_path, take, fragment):
    with pytest.raises(KitError, match=fragment):
        run_study(load_study(_take_recipe(tmp_path, take)), progress=False)
    assert not (tmp_path / "runs").exists()


def test_choosing_a_row_that_takes_settings_keeps_its_source(tmp_path):
    from adafilter_lib.studies.recipe import rows_named

    take = {"row": "surgical", "settings": {"method.surgical.stage": "method.adafilter.gated_stage"}}
    study = rows_named(load_study(_take_recipe(tmp_path, take)), ["adafilter_in_stage"])
    assert [r.name for r in study.rows] == ["finetune", "surgical", "adafilter_in_stage"]


def test_training_some_rows_still_writes_the_tables_of_every_row(tmp_path):
    rows = {"finetune": {}, "linear_probe": {}, "adafilter_x": {"method": "adafilter", "set": ["method.adafilter.hidden=8"]}}
    recipe = _recipe(tmp_path, seeds=[0], rows=rows)
    assert cli.main(["tune", recipe, "--no-progress"]) == 0
    before = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert cli.main(["tune", recipe, "--rows", "adafilter_x", "--no-progress"]) == 0  # reuses; trains nothing new
    assert pd.read_csv(tmp_path / "out" / "comparison.csv").equals(before) and len(before) == 3
    assert "--rows" not in (tmp_path / "out" / "README.md").read_text()
