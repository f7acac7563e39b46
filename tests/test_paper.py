"""Paper-scale path up to the network boundary: configs, prepare, and the sweep on stand-in folder data."""

import io
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from adafilter_lib.cli.app import main
from adafilter_lib.core import files, runs
from adafilter_lib.core.config import load_config
from adafilter_lib.core.config_files import resolve_config
from adafilter_lib.core.errors import KitError
from adafilter_lib.data import dataset_names
from adafilter_lib.data.prepare import ARCHIVE_SETS, prepare
from adafilter_lib.studies.sweep import paper_config_dir, parse_shard, plan, reduction_line, run_sweep, shard
from adafilter_lib.training.trainer import fit

PAPER_CONFIGS = sorted(paper_config_dir().glob("*.yaml"))


def test_every_paper_config_loads_and_names_a_registered_dataset():
    assert len(PAPER_CONFIGS) == 9
    for path in PAPER_CONFIGS:
        cfg = load_config(path)
        assert cfg.data.dataset == path.stem and cfg.data.dataset in dataset_names()
        assert cfg.model.backbone == "resnet50" and cfg.data.resolution == 224
        assert f"prepare {path.stem}" in path.read_text().splitlines()[4]  # the header says how to get the data


def test_prepare_without_the_archive_says_where_to_get_it_and_writes_nothing(tmp_path, capsys):
    assert main(["prepare", "stanford_dogs", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "http://vision.stanford.edu/aditya86/ImageNetDogs/images.tar" in err and str(tmp_path) in err
    assert err.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_prepare_rejects_an_archive_with_the_wrong_checksum(tmp_path):
    for archive in ARCHIVE_SETS["stanford_dogs"].archives:
        (tmp_path / archive.file).write_bytes(b"not the real archive")
    with pytest.raises(KitError, match="SHA-256"):
        prepare("stanford_dogs", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.tar", "lists.tar"]


def _png(rng) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_prepare_unpacks_an_archive_set_and_writes_its_split_list(tmp_path):
    rng = np.random.default_rng(0)
    with tarfile.open(tmp_path / "indoorCVPR_09.tar", "w") as tar:
        for cls in ("bar", "kitchen"):
            for i in range(3):
                data = _png(rng)
                info = tarfile.TarInfo(f"Images/{cls}/{i}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "TrainImages.txt").write_text("bar/0.png\nbar/1.png\nkitchen/0.png\nkitchen/1.png\n")
    (tmp_path / "TestImages.txt").write_text("bar/2.png\nkitchen/2.png\n")
    out = prepare("mit_indoor67", tmp_path)
    table = pd.read_csv(out)
    assert out == tmp_path / "splits" / "mit_indoor67.csv"
    assert table["split"].value_counts().to_dict() == {"train": 4, "test": 2}
    assert sorted(table["label"].unique()) == [0, 1]


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """A folder dataset with 3 classes of 10 noise images, and the tiny training overrides."""
    root = tmp_path_factory.mktemp("standin")
    rng = np.random.default_rng(1)
    for cls in ("a", "b", "c"):
        (root / cls).mkdir()
        for i in range(10):
            (root / cls / f"{i}.png").write_bytes(_png(rng))
    tiny = [
        "data.resolution=32",
        "data.batch_size=4",
        "data.val_fraction=0.25",
        "model.backbone=resnet18",
        "model.pretrained=false",
        "optim.chance_loss_factor=0",  # random weights: mechanics, not learning
        "optim.epochs=2",
    ]
    return f"folder:{root}", tiny


def test_shards_cover_the_grid_exactly_once(standin, tmp_path):
    dataset, tiny = standin
    grid = plan(
        [dataset, "digits"],
        ["finetune", "linear_probe", "adafilter"],
        [0, 1, 2],
        str(tmp_path),
        overrides=tiny,
        config="defaults",
    )
    names = [c.resolved_run_name() for c in grid]
    parts = [[c.resolved_run_name() for c in shard(grid, i, 3)] for i in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(names) and len(set(sum(parts, []))) == len(names) == 18
    assert parse_shard("2/3") == (2, 3)
    with pytest.raises(KitError):
        parse_shard("4/3")


def test_sweep_builds_the_table_is_idempotent_and_resumes(standin, tmp_path, capsys):
    dataset, tiny = standin
    grid = plan([dataset], ["linear_probe", "finetune"], [0, 1], str(tmp_path / "runs"), overrides=tiny, config="defaults")
    killed = grid[0]

    def kill(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(killed, progress=False, on_epoch_end=kill)
    assert runs.run_state(killed.run_dir()) == "unfinished"

    table = run_sweep(grid, str(tmp_path / "out"), progress=False, method_order=["linear_probe", "finetune"])
    assert all(runs.run_state(c.run_dir()) == "finished" for c in grid)
    assert table["seeds"].tolist() == [2, 2] and table["method"].tolist() == ["linear_probe", "finetune"]
    assert len(files.read_jsonl(killed.run_dir() / "metrics.jsonl")) == 2  # resumed, not restarted twice
    stamps = {c.resolved_run_name(): (c.run_dir() / "summary.json").stat().st_mtime_ns for c in grid}
    again = run_sweep(grid, str(tmp_path / "out"), progress=False, method_order=["linear_probe", "finetune"])
    assert again.equals(table)
    assert stamps == {c.resolved_run_name(): (c.run_dir() / "summary.json").stat().st_mtime_ns for c in grid}
    assert (tmp_path / "out" / "error_table.csv").exists()
    assert "paper" in reduction_line(table)


def test_dry_run_prints_the_plan_without_training(standin, tmp_path, capsys):
    dataset, tiny = standin
    grid = plan(["stanford_dogs"], ["finetune"], [0], str(tmp_path), overrides=tiny)
    assert run_sweep(grid, str(tmp_path / "out"), dry_run=True) is None
    out = capsys.readouterr().out
    assert "to do" in out and "stanford_dogs__finetune" in out and "bench" in out
    assert not any(tmp_path.glob("*__*"))


def test_sweep_plans_the_paper_protocol_from_the_packaged_configs_in_any_folder(tmp_path, monkeypatch, capsys):
    from adafilter_lib.cli.app import main

    monkeypatch.chdir(tmp_path)  # no configs/ folder here: only what the installed package ships
    grid = plan(["fgvc_aircraft", "uc_merced_full"], ["finetune"], [0], "runs")
    assert {(c.model.backbone, c.data.resolution, c.optim.epochs) for c in grid} == {("resnet50", 224, 30)}
    with pytest.raises(KitError, match="no config for dataset 'digits'.*--config FILE"):
        plan(["digits"], ["finetune"], [0], "runs")
    assert main(["sweep", "--datasets", "dtd", "--methods", "finetune", "--dry-run"]) == 0
    assert "dtd__finetune__resnet50__s0" in capsys.readouterr().out
    assert main(["sweep", "--datasets", "digits", "--methods", "finetune", "--dry-run"]) == 2
    assert "no config for dataset 'digits'" in capsys.readouterr().err
    assert load_config(resolve_config("paper/dtd")).data.dataset == "dtd"  # train --config paper/dtd


def test_sweep_keeps_each_configs_labelled_images_per_class_unless_set(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "digits.yaml").write_text("data:\n  dataset: digits\n  n_per_class: 7\n")
    (configs / "mnist5k.yaml").write_text("data:\n  dataset: mnist5k\n")
    grid = plan(["digits", "mnist5k"], ["finetune"], [0], str(tmp_path / "runs"), config_dir=str(configs))
    assert {c.data.dataset: c.data.n_per_class for c in grid} == {"digits": 7, "mnist5k": None}
    grid = plan(["digits"], ["finetune"], [0], str(tmp_path / "runs"), config_dir=str(configs), overrides=["data.n_per_class=5"])
    assert grid[0].data.n_per_class == 5
    with pytest.raises(KitError, match="names the same run twice"):
        plan(["digits"], ["finetune"], [0, 0], str(tmp_path / "runs"), config_dir=str(configs))


def test_a_failed_run_is_left_out_of_the_sweep_table_and_the_sweep_goes_on(standin, tmp_path, capsys, monkeypatch):
    from adafilter_lib.core.errors import RunFailed
    from adafilter_lib.studies import sweep

    dataset, tiny = standin
    grid = plan([dataset], ["linear_probe", "finetune"], [0], str(tmp_path / "runs"), overrides=tiny, config="defaults")
    real_fit = sweep.fit

    def fit_or_fail(cfg, **kwargs):
        if cfg.method.name == "linear_probe":
            raise RunFailed(f"run '{cfg.run_dir()}' failed: validation loss is nan after epoch 1")
        return real_fit(cfg, **kwargs)

    monkeypatch.setattr(sweep, "fit", fit_or_fail)
    table = run_sweep(grid, str(tmp_path / "out"), progress=False)
    assert table["method"].tolist() == ["finetune"]
    out = capsys.readouterr().out
    assert "failed: run" in out and "1 failed run(s) left out of the table: " in out
