"""DELTA, BSS and WiSE-FT: penalties from known inputs, exact WiSE-FT endpoints, and runs through fit."""

import copy

import pytest
import torch
import torch.nn.functional as F

from adafilter_lib.core.config import load_config
from adafilter_lib.core.model import build_transfer_model
from adafilter_lib.methods import build_method
from adafilter_lib.methods.regularizers import bss_penalty, delta_distance
from adafilter_lib.training.trainer import fit


def _setup(name, *overrides, base_overrides=()):
    cfg = load_config(None, [f"method.name={name}", *base_overrides, *overrides])
    torch.manual_seed(0)
    method = build_method(cfg)
    model = method.build_model(build_transfer_model("resnet18", 10, pretrained=False))
    method.prepare(model)
    return cfg, method, model


def _drift(model, scale=0.05):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.features.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("a", [0.0, 1.0])
def test_wise_ft_at_the_ends_reproduces_the_pretrained_and_the_finetuned_backbone_exactly(a):
    _, method, model = _setup("wise_ft", f"method.wise_ft.alpha={a}")
    pretrained = copy.deepcopy(model.features.state_dict())
    _drift(model)
    model.features.layer1[0].bn1.running_mean.add_(1.0)  # statistics are interpolated too
    finetuned = copy.deepcopy(model.state_dict())
    method.finalize(model)
    expected = pretrained if a == 0.0 else {k: finetuned[f"features.{k}"] for k in pretrained}
    assert all(torch.equal(v, expected[k]) for k, v in model.features.state_dict().items())
    assert torch.equal(model.head.weight, finetuned["head.weight"])  # the new head is never interpolated


def test_wise_ft_halfway_is_the_midpoint():
    _, method, model = _setup("wise_ft")
    before = copy.deepcopy(model.features.conv1.weight)
    _drift(model)
    after = model.features.conv1.weight.detach().clone()
    method.finalize(model)
    assert torch.allclose(model.features.conv1.weight, 0.5 * (before + after), atol=1e-7)


def test_bss_penalizes_the_k_smallest_squared_singular_values_of_a_known_matrix():
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(3, 3))
    v, _ = torch.linalg.qr(torch.randn(6, 3))
    features = u @ torch.diag(torch.tensor([5.0, 3.0, 0.5])) @ v.T  # (B=3, D=6), singular values 5, 3, 0.5
    assert bss_penalty(features, 1).item() == pytest.approx(0.25, rel=1e-4)
    assert bss_penalty(features, 2).item() == pytest.approx(9.25, rel=1e-4)
    _, method, model = _setup("bss", "method.bss.eta=0.1", "method.bss.k=2")
    model.train()
    output = model(torch.randn(4, 3, 32, 32))
    assert method.extra_loss(model, output).item() == pytest.approx(0.1 * bss_penalty(model.pooled, 2).item())


def test_delta_distance_by_hand_with_uniform_attention():
    a, b = torch.zeros(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)
    a[:, 1] = 2.0  # channel 1 differs by 2 everywhere: mean squared difference 4
    uniform = {"x": torch.full((3,), 1 / 3)}
    assert delta_distance({"x": a}, {"x": b}, uniform).item() == pytest.approx(0.5 * 4.0)
    focused = {"x": torch.tensor([0.0, 1.0, 0.0])}  # all attention on the channel that moved: C * W = 3
    assert delta_distance({"x": a}, {"x": b}, focused).item() == pytest.approx(0.5 * 3 * 4.0)


def test_delta_is_zero_at_initialization_and_positive_after_drift(tiny_overrides):
    _, method, model = _setup("delta", "method.delta.beta=0", "method.delta.attention_images=16", base_overrides=tiny_overrides)
    assert set(method.attention) == {"layer1", "layer2", "layer3", "layer4"}
    assert all(
        w.shape == (c,) and w.sum().item() == pytest.approx(1.0) for w, c in zip(method.attention.values(), (64, 128, 256, 512))
    )
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    method.train_mode(model)
    assert method.extra_loss(model, model(images)).item() == 0.0
    _drift(model)
    output = model(images)
    penalty = method.extra_loss(model, output)
    assert penalty.item() > 0
    (F.cross_entropy(output.logits, labels) + penalty).backward()
    assert torch.count_nonzero(model.features.layer1[0].conv1.weight.grad) > 0
    model.eval()
    model(images)
    assert model.taps == {}  # no feature maps are kept at evaluation


@pytest.mark.slow
@pytest.mark.parametrize("name", ["delta", "bss", "wise_ft", "spottune"])
def test_each_baseline_trains_through_fit_to_a_run_record(tiny_overrides, name):
    cfg = load_config(None, tiny_overrides + [f"method.name={name}", "optim.epochs=1", "method.delta.attention_images=8"])
    summary = fit(cfg, progress=False)
    assert 0.0 <= summary["top1_err"] <= 100.0 and (cfg.run_dir() / "best.pt").exists()
    assert ("test_frac_finetuned" in summary) == (name == "spottune")  # SpotTune's block gates feed the gate statistics


@pytest.mark.parametrize(
    "override",
    ["method.wise_ft.alpha=1.5", "method.bss.k=0", "method.delta.attention=softmax", "method.spottune.eval_policy=greedy"],
)
def test_invalid_baseline_options_are_one_line_errors(override):
    from adafilter_lib.core.errors import KitError

    with pytest.raises(KitError, match=override.split("=")[0]) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)
