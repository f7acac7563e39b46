"""Pruned models that really are smaller: channel pruning through Torch-Pruning (a plain, smaller network that
loads back from a tensors-only best.pt) and pruned runs reloaded with the test error they reported."""

import pytest
import torch

from adafilter_lib.core import runs
from adafilter_lib.core.config import load_config
from adafilter_lib.core.engine import evaluate
from adafilter_lib.core.errors import KitError
from adafilter_lib.core.model import build_transfer_model, shrink_to_state
from adafilter_lib.pruning import structured
from adafilter_lib.pruning.baselines import run_channel_pruning, run_gradual_magnitude
from adafilter_lib.training.finished import load_finished_run
from adafilter_lib.training.setup import eval_loader

pytest.importorskip("torch_pruning")

SHORT_PATH = [
    "method.fine_pruning.warmup_epochs=1",
    "method.fine_pruning.rounds=1",
    "method.fine_pruning.round_epochs=0",
    "method.fine_pruning.final_epochs=1",
]


def _lite0():
    torch.manual_seed(0)
    return build_transfer_model("efficientnet_lite0", 5, pretrained=False).eval()


def test_a_channel_pruned_lite0_is_a_plain_smaller_network_that_loads_back_from_its_state_dict():
    model = _lite0()
    dense_macs, dense_params = structured.macs_and_params(model, 64)
    structured.channel_prune(model, 0.5, 64)
    macs, params = structured.macs_and_params(model, 64)
    assert dense_macs / macs > 3 and dense_params / params > 3  # depthwise and residual couplings pruned together
    assert model.head.out_features == 5  # the new head keeps every class
    rebuilt = _lite0()
    shrink_to_state(rebuilt, model.state_dict())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(images).logits, model(images).logits)
    assert structured.macs_and_params(rebuilt, 64) == (macs, params)


def test_the_channel_ratio_is_found_for_a_target_mac_reduction():
    model = _lite0()
    ratio = structured.ratio_for_macs(model, 2.0, 64)
    dense_macs, _ = structured.macs_and_params(model, 64)
    structured.channel_prune(model, ratio, 64)
    assert dense_macs / structured.macs_and_params(model, 64)[0] == pytest.approx(2.0, rel=0.02)
    with pytest.raises(KitError, match="out of reach"):
        structured.ratio_for_macs(_lite0(), 1000.0, 64)


def _test_error(run_dir) -> float:
    finished = load_finished_run(run_dir, device="cpu")
    cfg = finished.cfg
    return evaluate(finished.model, eval_loader(finished.splits.test, cfg), finished.device, cfg.amp, cfg.channels_last)[
        "top1_err"
    ]


def test_a_channel_pruning_run_reports_its_cost_and_reloads_with_its_test_error(tiny_overrides):
    cfg = load_config(
        None, tiny_overrides + SHORT_PATH + ["method.name=channel_pruning", "method.fine_pruning.target_macs_ratio=2"]
    )
    summary = run_channel_pruning(cfg, progress=False)
    assert summary["macs_ratio"] == pytest.approx(2.0, rel=0.02) and summary["params_ratio"] > 1.5
    assert summary["compression"] > 1.5 and summary["latency_ratio_b1"] > 0 and summary["latency_ratio_b32"] > 0
    state = runs.load_checkpoint(cfg.run_dir() / runs.BEST)  # tensors only: weights_only=True reads it
    assert state["features.conv1.weight"].shape[0] < 64
    assert _test_error(cfg.run_dir()) == summary["top1_err"]


def test_a_gradual_magnitude_run_reloads_into_an_unmasked_model_with_its_test_error(tiny_overrides):
    cfg = load_config(
        None,
        tiny_overrides
        + SHORT_PATH
        + ["method.name=gradual_magnitude", "method.fine_pruning.target_compression=3", "method.fine_pruning.round_epochs=1"],
    )
    summary = run_gradual_magnitude(cfg, progress=False)
    finished = load_finished_run(cfg.run_dir(), device="cpu")
    assert not any(key.endswith("weight_mask") for key in finished.model.state_dict())
    assert _test_error(cfg.run_dir()) == summary["top1_err"]


def test_channel_pruning_refuses_a_weight_compression_target():
    with pytest.raises(KitError, match="target_macs_ratio; unset target_compression"):
        load_config(None, ["method.name=channel_pruning", "method.fine_pruning.target_compression=4"])
