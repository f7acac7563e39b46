"""Under DDP, rank 0's decision (reuse, refuse or train) reaches every rank: no rank may hang at a barrier.

Two gloo processes call ``fit`` on the same run. The hard cases happen between the ranks' first check and rank
0's look under the run lock: another process holds the lock, or finishes the run meanwhile (forced here by a hook
on rank 0 that puts a finished run in place right after its data and model are prepared).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import traceback

import pytest
import torch.multiprocessing as mp

from adafilter_lib.core import runs
from adafilter_lib.core.config import load_config
from adafilter_lib.training import trainer
from adafilter_lib.training.trainer import fit

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, overrides: list[str], port: int, out: str, finished_copy: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", OMP_NUM_THREADS="1"
    )
    cfg = load_config(None, overrides)
    if finished_copy and rank == 0:  # another process finishes the run after the first check
        prepare = trainer.prepare_run

        def prepare_then_someone_finishes(c):
            prepared = prepare(c)
            shutil.copytree(finished_copy, c.run_dir())
            return prepared

        trainer.prepare_run = prepare_then_someone_finishes
    try:
        outcome = {"summary": fit(cfg, progress=False)}
    except Exception as err:
        outcome = {"error": type(err).__name__, "message": str(err), "trace": traceback.format_exc()[-800:]}
    with open(f"{out}/rank{rank}.json", "w") as handle:
        json.dump(outcome, handle, default=str)


def _run_two_ranks(overrides, tmp_path, finished_copy: str = "") -> list[dict]:
    ctx = mp.start_processes(
        _child, args=(overrides, _free_port(), str(tmp_path), finished_copy), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.kill()
            pytest.fail("a rank hung: the ranks did not end within 240 s")
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_every_rank_trains_or_reuses_as_rank_zero_decided(tiny_overrides, tmp_path):
    outcomes = _run_two_ranks(tiny_overrides, tmp_path)
    assert all("summary" in o for o in outcomes), outcomes
    assert outcomes[0]["summary"]["world_size"] == 2
    outcomes = _run_two_ranks(tiny_overrides, tmp_path)  # finished: both ranks reuse it
    assert [o["summary"]["finished_at"] for o in outcomes] == [outcomes[0]["summary"]["finished_at"]] * 2


def test_a_run_locked_by_another_process_after_the_first_check_stops_every_rank(tiny_overrides, tmp_path):
    cfg = load_config(None, tiny_overrides)
    with runs.run_lock(cfg.run_dir()):  # the first check does not look at the lock; rank 0's look under it does
        outcomes = _run_two_ranks(tiny_overrides, tmp_path)
    assert [o.get("error") for o in outcomes] == ["KitError", "KitError"], outcomes
    assert all("another process" in o["message"] for o in outcomes)
    assert not runs.staging_dir(cfg.run_dir()).exists()


def test_a_run_finished_by_another_process_after_the_first_check_is_reused_by_every_rank(tiny_overrides, tmp_path):
    cfg = load_config(None, tiny_overrides)
    reference = load_config(None, tiny_overrides + [f"runs_root={tmp_path / 'elsewhere'}"])
    summary = fit(reference, progress=False)  # what "another process" finished
    outcomes = _run_two_ranks(tiny_overrides, tmp_path, finished_copy=str(reference.run_dir()))
    assert all(o.get("summary", {}).get("finished_at") == summary["finished_at"] for o in outcomes), outcomes
    assert not runs.staging_dir(cfg.run_dir()).exists()
