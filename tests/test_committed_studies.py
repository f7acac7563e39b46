"""Every committed study with records rebuilds its tables from the clone: the run records under
``results/<study>/runs/`` (config, summary, metrics; no weights) give the committed CSVs again."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from adafilter_lib.core.config_files import packaged_config_path
from adafilter_lib.studies.demo import demo_study
from adafilter_lib.studies.recipe import load_study
from adafilter_lib.studies.tune import chosen_so_far, selection_runs
from adafilter_lib.studies.tune_tables import write_tables

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in packaged_config_path("studies").glob("*.yaml"))
# The demo's committed records: `demo --runs results/demo/runs` (make demo trains into runs/demo), and
# `demo --seeds 0 1 2 --out results/demo_near_far --runs results/demo_near_far/runs`.
DEMOS = {"demo": ("results/demo", [0]), "demo_near_far": ("results/demo_near_far", [0, 1, 2])}


def _studies():
    """Every shipped study whose records are committed (recipe studies, and the demo)."""
    found = []
    for name in RECIPES:
        study = load_study(packaged_config_path("studies", f"{name}.yaml"))
        if (ROOT / study.runs_root).is_dir():
            found.append(pytest.param(study, id=name))
    for name, (out, seeds) in DEMOS.items():
        if (ROOT / out / "runs").is_dir():
            found.append(pytest.param(demo_study(runs_root=f"{out}/runs", out_dir=out, seeds=seeds), id=name))
    return found


def test_the_headline_studies_have_their_records_committed():
    ids = {p.id for p in _studies()}
    assert {"uc_merced_few", "demo"} <= ids, ids


@pytest.mark.parametrize("study", _studies())
def test_a_committed_study_rebuilds_its_tables_from_its_records(study, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name their folders relative to the repository
    rebuilt = dataclasses.replace(study, out_dir=str(tmp_path))
    write_tables(rebuilt, selection_runs(rebuilt, chosen_so_far(rebuilt)), "rebuild")
    for name in ("comparison.csv", "cells.csv"):
        committed = ROOT / study.out_dir / name
        assert (tmp_path / name).read_text() == committed.read_text(), f"{committed} does not rebuild from {study.runs_root}"
    for committed in sorted((ROOT / study.out_dir).glob("*/error_table.csv")):
        row = committed.parent.name
        if (tmp_path / row).is_dir():
            assert (tmp_path / row / "error_table.csv").read_text() == committed.read_text(), committed
