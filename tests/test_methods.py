import pytest
import torch
import torch.nn.functional as F

from adafilter_lib.core.config import load_config
from adafilter_lib.core.errors import KitError
from adafilter_lib.core.model import build_transfer_model
from adafilter_lib.methods import build_method


def _setup(name, *overrides):
    cfg = load_config(None, [f"method.name={name}", "optim.lr=0.01", "optim.head_lr=0.1", *overrides])
    torch.manual_seed(0)
    model = build_transfer_model("resnet18", 5, pretrained=False)
    method = build_method(cfg)
    method.prepare(model)
    return cfg, model, method


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_finetune_trains_everything_with_two_learning_rates():
    _, model, method = _setup("finetune")
    assert _trainable(model) == {n for n, _ in model.named_parameters()}
    groups = {g["name"]: g for g in method.param_groups(model)}
    assert groups["backbone"]["lr"] == 0.01 and groups["head"]["lr"] == 0.1
    assert len(groups["head"]["params"]) == 2


def test_linear_probe_trains_exactly_the_head_and_keeps_bn_statistics():
    _, model, method = _setup("linear_probe")
    assert _trainable(model) == {"head.weight", "head.bias"}
    before = {k: v.clone() for k, v in model.features.state_dict().items()}
    optimizer = torch.optim.SGD(method.param_groups(model), lr=0.1)
    method.train_mode(model)
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)).logits, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.features.state_dict().items())  # weights and running stats
    assert all(p.grad is None for p in model.features.parameters())


def test_l2sp_penalty_matches_hand_computation():
    cfg, model, method = _setup("l2sp", "method.l2sp.alpha=0.3", "method.l2sp.beta=0.05")
    out = model(torch.randn(2, 3, 32, 32))
    head_sq = sum((p**2).sum() for p in model.head.parameters())
    assert torch.allclose(method.extra_loss(model, out), 0.5 * 0.05 * head_sq)  # no drift at the start
    with torch.no_grad():
        model.features.conv1.weight += 0.1  # drift every element of one tensor by 0.1
    expected = 0.5 * 0.3 * (0.1**2) * model.features.conv1.weight.numel() + 0.5 * 0.05 * head_sq
    assert torch.allclose(method.extra_loss(model, out), expected, rtol=1e-4)


def test_l2sp_gradient_pulls_back_towards_pretrained_weights():
    _, model, method = _setup("l2sp", "method.l2sp.alpha=1.0", "method.l2sp.beta=0")
    with torch.no_grad():
        model.features.conv1.weight += 0.2
    method.extra_loss(model, None).backward()
    assert torch.allclose(model.features.conv1.weight.grad, torch.full_like(model.features.conv1.weight, 0.2), atol=1e-6)
    assert torch.count_nonzero(model.features.layer1[0].conv1.weight.grad) == 0


def test_scratch_starts_from_random_weights_at_the_large_rate():
    _, model, method = _setup("scratch")
    assert method.uses_pretrained is False
    assert {g["lr"] for g in method.param_groups(model)} == {0.1}


def test_unknown_method_lists_valid_names():
    with pytest.raises(KitError) as err:
        build_method(load_config(None, ["method.name=fine_tune"]))
    assert "did you mean 'finetune'" in str(err.value) and "linear_probe" in str(err.value)
