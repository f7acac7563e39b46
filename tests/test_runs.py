"""Run directories: run names stay inside the runs folder, publishing removes only finished runs, file modes."""

import os
import stat

import pytest

from adafilter_lib.core import files, runs
from adafilter_lib.core.config import load_config
from adafilter_lib.core.errors import KitError


@pytest.mark.parametrize("name", ["../victim", ".", "..", "/tmp/abs", "a/b", ".hidden", "x.partial", ""])
def test_run_name_must_be_one_plain_folder_name(name):
    with pytest.raises(KitError, match="run_name must be one plain folder name") as excinfo:
        load_config(None, [f"run_name={name}"] if name else ["run_name=''"])
    assert "\n" not in str(excinfo.value)


def test_plain_run_names_are_accepted():
    assert load_config(None, ["run_name=my_run-1.b"]).resolved_run_name() == "my_run-1.b"


def test_publish_never_removes_a_folder_that_is_not_a_finished_run(tmp_path):
    staging, target = tmp_path / "run.partial", tmp_path / "run"
    staging.mkdir()
    (staging / runs.SUMMARY).write_text("{}")
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(KitError, match="is not a finished run"):
        runs.publish(staging, target)
    assert (target / "precious.txt").read_text() == "keep me" and staging.is_dir()
    (target / "precious.txt").unlink()
    (target / runs.SUMMARY).write_text("{}")  # an older finished run of the same name is replaced
    runs.publish(staging, target)
    assert not staging.exists() and (target / runs.SUMMARY).is_file()


def test_results_are_written_with_the_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        files.atomic_write_text(tmp_path / "a.txt", "x")
        files.atomic_torch_save({"x": 1}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_a_run_trained_by_another_process_is_refused_with_one_line_and_left_alone(tiny_cfg):
    import fcntl

    from adafilter_lib.training.trainer import fit

    lock_path = tiny_cfg.run_dir().with_name(f".{tiny_cfg.run_dir().name}.lock")
    lock_path.parent.mkdir(parents=True)
    with open(lock_path, "a") as other:  # what a concurrent `train` of the same run holds
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(KitError, match="being trained by another process") as excinfo:
            fit(tiny_cfg, progress=False)
        assert "\n" not in str(excinfo.value)
        assert not runs.staging_dir(tiny_cfg.run_dir()).exists()  # nothing of the other run's folder touched
    summary = fit(tiny_cfg, progress=False)  # once the other process is gone, the run trains
    assert runs.is_finished(tiny_cfg.run_dir()) and "top1_err" in summary and not lock_path.exists()


def test_two_identical_train_commands_started_together_leave_one_run_and_one_refusal(tmp_path):
    import subprocess
    import sys

    args = [
        sys.executable,
        "-m",
        "adafilter_lib",
        "train",
        "--dataset",
        "digits",
        "--backbone",
        "resnet18",
        "--epochs",
        "4",
        "--runs",
        str(tmp_path),
        "--no-progress",
        "--set",
        "data.n_per_class=10",
        "data.resolution=32",
        "model.pretrained=false",
        "optim.chance_loss_factor=0",  # random weights: mechanics, not learning
        "device=cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    run = tmp_path / "digits__finetune__resnet18__s0"
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "metrics.jsonl", "summary.json"]
    assert not runs.staging_dir(run).exists()
    if codes == [0, 2]:  # the usual case: the second stops with one line while the first trains
        refusal = next(err for code, _, err in results if code == 2)
        assert "being trained by another process" in refusal and len(refusal.strip().splitlines()) == 1
    else:  # the second reached the lock only after the first had finished: it reuses the finished run
        assert codes == [0, 0] and all("top1_err" in out for _, out, _ in results)


def _finished_run(cfg, summary):
    folder = runs.RunFolder(cfg)
    folder.start(force=False)
    folder.finish(summary)
    return folder


def test_run_folder_life_cycle_reuses_refuses_and_publishes(tmp_path):
    cfg = load_config(None, [f"runs_root={tmp_path}", "method.name=prune_after_finetune"])
    folder = runs.RunFolder(cfg)
    assert folder.reuse(force=False) is None
    folder.start(force=False)
    (folder.staging / runs.CHECKPOINT).write_text("x")
    with pytest.raises(KitError, match="--resume"):
        folder.check_unfinished(resume=False, force=False)
    folder.finish({"top1_err": 1.0})
    assert runs.is_finished(folder.run_dir) and not folder.staging.exists()
    assert not (folder.run_dir / runs.CHECKPOINT).exists()  # only a resume needs it
    assert folder.reuse(force=False) == {"top1_err": 1.0} and folder.reuse(force=True) is None
    other = load_config(None, [f"runs_root={tmp_path}", "method.name=prune_after_finetune", "optim.lr=0.5"])
    with pytest.raises(KitError, match=r"other settings \(optim.lr\)"):
        runs.RunFolder(other).reuse(force=False)


def test_a_finished_pruning_run_with_other_settings_is_refused_not_reused(tmp_path):
    from adafilter_lib.pruning.runner import run_pruning

    settings = [f"runs_root={tmp_path}", "method.name=prune_after_finetune", "method.fine_pruning.target_sparsity=0.5"]
    _finished_run(load_config(None, settings), {"top1_err": 3.0})
    assert run_pruning(load_config(None, settings), progress=False) == {"top1_err": 3.0}  # same settings: reused
    with pytest.raises(KitError, match="other settings"):
        run_pruning(load_config(None, [*settings, "optim.lr=0.5"]), progress=False)


def test_json_records_are_strict_a_non_finite_number_is_null(tmp_path):
    import json
    import math

    def strict(text):  # what any JSON reader but Python's accepts: no bare NaN / Infinity
        return json.loads(text, parse_constant=lambda word: pytest.fail(f"non-standard JSON constant {word}"))

    files.atomic_write_json(tmp_path / "summary.json", {"top1_err": math.nan, "nested": {"x": [math.inf, 1.0]}})
    assert strict((tmp_path / "summary.json").read_text()) == {"top1_err": None, "nested": {"x": [None, 1.0]}}
    files.append_jsonl(tmp_path / "metrics.jsonl", {"epoch": 1, "val_loss": -math.inf})
    assert [strict(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [{"epoch": 1, "val_loss": None}]
