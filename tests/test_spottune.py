"""SpotTune: block copies, the policy gradient, forced paths against reference networks, the trainable set."""

import copy

import pytest
import torch
import torch.nn.functional as F

from adafilter_lib.core.config import load_config
from adafilter_lib.core.errors import KitError
from adafilter_lib.core.model import build_transfer_model
from adafilter_lib.methods import build_method


def _setup(*overrides, backbone="resnet18"):
    cfg = load_config(None, ["method.name=spottune", f"model.backbone={backbone}", *overrides])
    torch.manual_seed(0)
    base = build_transfer_model(backbone, 5, pretrained=False).eval()
    pretrained = copy.deepcopy(base)
    method = build_method(cfg)
    model = method.build_model(base)
    method.prepare(model)
    return method, model, pretrained


def _drift(model):
    """Move every fine-tuned block away from its frozen copy (at initialization both paths are equal)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name in model.block_names:
            for p in model.features.get_submodule(name).parameters():
                p.add_(0.05 * torch.randn_like(p))


def test_forced_frozen_path_reproduces_the_pretrained_network_and_forced_finetuned_the_drifted_one():
    method, model, pretrained = _setup()
    _drift(model)
    model.eval()
    images = torch.randn(3, 3, 32, 32)
    model.forced = 0
    assert torch.equal(model(images).logits, pretrained(images).logits)
    model.forced = 1
    finetuned = copy.deepcopy(pretrained)
    finetuned.features.load_state_dict(model.features.state_dict())  # the drifted blocks in a plain ResNet
    assert torch.allclose(model(images).logits, finetuned(images).logits, atol=1e-6)
    assert not torch.allclose(model(images).logits, pretrained(images).logits, atol=1e-3)


def test_policy_gradient_reaches_the_policy_network_and_frozen_copies_get_none():
    method, model, _ = _setup()
    _drift(model)
    method.train_mode(model)
    output = model(torch.randn(4, 3, 32, 32))
    F.cross_entropy(output.logits, torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in model.policy.parameters() if p.dim() > 1)
    assert all(p.grad is None for p in model.frozen.parameters())
    assert not model.frozen.training and model.policy.training


def test_gates_are_hard_per_block_and_deterministic_at_evaluation():
    method, model, _ = _setup()
    images = torch.randn(4, 3, 32, 32)
    model.eval()
    first, second = model(images).gates, model(images).gates
    assert list(first) == [f"layer{s}.{i}" for s in range(1, 5) for i in range(2)]
    assert all(g.shape == (4, 1) and set(g.unique().tolist()) <= {0.0, 1.0} for g in first.values())
    assert all(torch.equal(first[k], second[k]) for k in first)
    _, sampling, _ = _setup("method.spottune.eval_policy=sample")
    sampling.eval()
    torch.manual_seed(0)
    draws = torch.stack([torch.cat(list(sampling(images).gates.values()), 1) for _ in range(5)])
    assert not all(torch.equal(draws[0], d) for d in draws[1:])


def test_exact_trainable_set_and_learning_rates():
    method, model, _ = _setup("optim.lr=0.01", "optim.head_lr=0.1", "method.spottune.policy_lr=0.003")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("frozen.") for n in trainable)
    assert {n for n, _ in model.named_parameters()} - trainable == {
        n for n, _ in model.named_parameters() if n.startswith("frozen.")
    }
    groups = {g["name"]: g["lr"] for g in method.param_groups(model)}
    assert groups == {"backbone": 0.01, "policy": 0.003, "head": 0.1}


def test_unsupported_backbone_is_a_one_line_error_listing_the_supported_ones():
    cfg = load_config(None, ["method.name=spottune", "model.backbone=mobilenet_v2"])
    with pytest.raises(KitError, match="supported: resnet18, resnet34, resnet50") as err:
        build_method(cfg).build_model(build_transfer_model("mobilenet_v2", 5, pretrained=False))
    assert "\n" not in str(err.value)
