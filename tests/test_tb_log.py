"""Optional TensorBoard logging: the events hold exactly the numbers of metrics.jsonl, gate usage included."""

import pytest

from adafilter_lib.core import files, runs
from adafilter_lib.core.config import load_config
from adafilter_lib.training.trainer import fit

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="the tensorboard extra is not installed"
)


def test_tensorboard_events_mirror_the_metrics_of_every_epoch(tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["method.name=adafilter", "log_tensorboard=true"])
    fit(cfg, progress=False)
    events = event_accumulator.EventAccumulator(str(cfg.run_dir() / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    metrics = files.read_jsonl(cfg.run_dir() / runs.METRICS)
    assert {"train/loss", "train/top1_err", "val/top1_err", "val/frac_finetuned"} <= tags
    assert [e.value for e in events.Scalars("val/top1_err")] == pytest.approx([m["val_top1_err"] for m in metrics])
    layer = next(iter(metrics[-1]["val_frac_by_layer"]))
    assert events.Scalars(f"gates_by_layer/{layer}")[-1].value == pytest.approx(metrics[-1]["val_frac_by_layer"][layer])
    # logging is not a setting of the computation: the finished run is reused without it
    assert fit(load_config(None, tiny_overrides + ["method.name=adafilter"]), progress=False)["top1_err"] is not None
