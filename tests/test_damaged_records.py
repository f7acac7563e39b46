"""Damaged run records and unwritable output paths: one line in every command that reads or writes them."""

from __future__ import annotations

import shutil

import pytest

from adafilter_lib.cli.app import main
from adafilter_lib.core import runs
from adafilter_lib.core.config import load_config
from adafilter_lib.core.files import read_metrics
from adafilter_lib.training.trainer import fit


@pytest.fixture
def run_copy(smoke_run, tmp_path):
    """A copy of the SMOKE AdaFilter run (with best.pt, gates.npz, metrics.jsonl) that a test may damage."""
    root = tmp_path / "runs"
    shutil.copytree(smoke_run, root / smoke_run.name)
    return root / smoke_run.name


def _truncate(path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _one_line_error(capsys, *fragments) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.parametrize(
    "command",
    [
        lambda run: ["counterfactual", "--runs", str(run.parent), "--no-progress"],
        lambda run: ["compact", "--run", str(run), "--thresholds", "0", "--no-progress"],
        lambda run: ["drift", "--runs", str(run.parent)],
    ],
    ids=["counterfactual", "compact", "drift"],
)
def test_a_truncated_best_pt_is_one_line(run_copy, capsys, command):
    _truncate(run_copy / runs.BEST)
    assert main(command(run_copy)) == 2
    _one_line_error(capsys, str(run_copy / runs.BEST), "damaged")


def test_a_truncated_gate_record_is_one_line(run_copy, capsys):
    _truncate(run_copy / "gates.npz")
    assert main(["drift", "--runs", str(run_copy.parent)]) == 2
    _one_line_error(capsys, "gate record", "damaged")


def test_a_torn_line_in_the_middle_of_metrics_is_one_line(run_copy, capsys):
    from adafilter_lib.analysis.records import load_metrics

    lines = (run_copy / runs.METRICS).read_text().splitlines(keepends=True)
    (run_copy / runs.METRICS).write_text('{"epoch": 1, "train_lo\n' + "".join(lines))
    with pytest.raises(Exception) as err:
        load_metrics(run_copy.parent)
    assert "line 1 is not JSON" in str(err.value) and "\n" not in str(err.value)


def test_a_killed_run_with_a_torn_last_metrics_line_resumes(tiny_overrides, tmp_path):
    cfg = load_config(None, tiny_overrides + ["optim.epochs=2"])

    class Kill(Exception):
        pass

    def kill(epoch, record):
        if epoch == 0:
            raise Kill

    with pytest.raises(Kill):
        fit(cfg, progress=False, on_epoch_end=kill)
    metrics = runs.staging_dir(cfg.run_dir()) / runs.METRICS
    with open(metrics, "a") as handle:
        handle.write('{"epoch": 2, "train_lo')  # a kill in the middle of the next append
    summary = fit(cfg, resume=True, progress=False)
    assert summary["best_epoch"] in (1, 2)
    assert [r["epoch"] for r in read_metrics(cfg.run_dir() / runs.METRICS)] == [1, 2]


def test_output_paths_that_cannot_be_created_are_one_line(run_copy, tmp_path, capsys, tiny_overrides):
    blocker = tmp_path / "FILE"
    blocker.write_text("")
    assert main(["train", "--no-progress", "--set", *tiny_overrides, f"runs_root={blocker}/sub"]) == 2
    _one_line_error(capsys, "cannot write", str(blocker))
    assert main(["table", "--runs", str(run_copy.parent), "--out", str(blocker)]) == 2
    _one_line_error(capsys, "cannot write", str(blocker))
    folder = tmp_path / "DIR"
    folder.mkdir()
    assert main(["usage", "--runs", str(run_copy.parent), "--out", str(folder)]) == 2
    _one_line_error(capsys, "cannot write", str(folder))
    assert not [p for p in folder.iterdir()]  # no temporary file left behind


def test_compact_refuses_thresholds_outside_the_frequency_range(run_copy, capsys):
    assert main(["compact", "--run", str(run_copy), "--thresholds", "-0.5"]) == 2
    _one_line_error(capsys, "[0, 1.01]")
