"""AdaFilter's exploration and rate-control options: evaluation modes, training noise, per-layer rate loss,
gate weight decay, and the paper's Fig. 1 gate inputs (image first, then the previous layer's output)."""

import copy

import pytest
import torch

from adafilter_lib.adafilter.gate_net import binarize_gates
from adafilter_lib.adafilter.network import GatedSite
from adafilter_lib.core.config import load_config
from adafilter_lib.core.model import ModelOutput, build_transfer_model
from adafilter_lib.core.optim import build_optimizer
from adafilter_lib.methods import build_method

X = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _model(*overrides, seed=0):
    cfg = load_config(None, ["model.backbone=resnet18", "method.name=adafilter", f"seed={seed}", *overrides])
    torch.manual_seed(0)  # the same weights for every seed: only the sampling seed differs
    method = build_method(cfg)
    model = method.build_model(build_transfer_model("resnet18", 5, pretrained=False))
    method.prepare(model)
    with torch.no_grad():  # gate logits near 0, so sampled gates are far from the thresholded ones
        for head in model.gate_net.heads:
            head.weight.normal_(0, 0.5)
    return cfg, method, model


def _flat(gates):
    return torch.cat([g.flatten() for g in gates.values()])


def test_sampled_evaluation_is_deterministic_for_one_seed_and_differs_across_seeds():
    _, _, model = _model("method.adafilter.eval_gates=sample", seed=0)
    first = model.eval()(X)
    again_in_pass = model(X)  # the next batch of the same pass draws new gates
    second = model.eval()(X)  # a new evaluation pass starts from the seed again
    assert torch.equal(_flat(first.gates), _flat(second.gates)) and torch.equal(first.logits, second.logits)
    assert not torch.equal(_flat(first.gates), _flat(again_in_pass.gates))
    _, _, other = _model("method.adafilter.eval_gates=sample", seed=1)
    other.load_state_dict(model.state_dict())
    assert not torch.equal(_flat(first.gates), _flat(other.eval()(X).gates))
    _, _, thresholded = _model(seed=0)
    thresholded.load_state_dict(model.state_dict())
    fixed = _flat(thresholded.eval()(X).gates)
    assert torch.equal(fixed, _flat(thresholded.eval()(X).gates))  # threshold: no randomness at all
    assert 0.05 < (fixed != _flat(first.gates)).float().mean() < 0.95


def test_mean_evaluation_averages_the_probabilities_of_k_sampled_passes():
    _, _, model = _model("method.adafilter.eval_gates=mean", "method.adafilter.eval_samples=3")
    out = model.eval()(X)
    model.router.restart_sampling()
    passes = [model._single_pass(X, False) for _ in range(3)]
    probs = torch.stack([p.logits.softmax(1) for p in passes]).mean(0)
    assert torch.allclose(out.logits.exp(), probs, atol=1e-6)
    name = model.gated_layer_names[4]
    majority = (torch.stack([p.gates[name] for p in passes]).mean(0) >= 0.5).float()
    assert torch.equal(out.gates[name], majority)
    assert not torch.equal(passes[0].gates[name], passes[1].gates[name])  # K different draws
    model.train()
    assert model(X).logits.shape == (6, 5)  # training: one pass, as always


def test_logistic_training_noise_samples_bernoulli_gates_and_temperature_scales_only_the_gradient():
    torch.manual_seed(0)
    logits = torch.full((20000, 1), 1.0, requires_grad=True)
    gates = binarize_gates(logits, training=True, noise="logistic", temperature=5.0)
    assert set(gates.unique().tolist()) == {0.0, 1.0}
    assert abs(gates.mean().item() - torch.sigmoid(torch.tensor(1.0)).item()) < 0.01  # P(1) = sigmoid(logit), any T
    torch.manual_seed(1)
    z = torch.tensor([[0.4]], requires_grad=True)
    binarize_gates(z, training=True, temperature=5.0).sum().backward()
    s = torch.sigmoid(torch.tensor(0.4 / 5.0))
    assert torch.allclose(z.grad, s * (1 - s) / 5.0)


def test_per_layer_rate_loss_is_zero_at_the_target_and_reaches_the_gate_network():
    _, method, model = _model(
        "method.adafilter.usage_penalty=1.0", "method.adafilter.usage_scope=layer", "method.adafilter.usage_target=0.75"
    )
    at_target = {"a": torch.tensor([[1.0, 1.0, 1.0, 0.0]]), "b": torch.tensor([[1.0, 0.0], [1.0, 1.0]])}
    assert method.extra_loss(model, ModelOutput(torch.zeros(1, 5), at_target)).item() == 0.0
    off = {"a": torch.ones(1, 4), "b": torch.zeros(2, 2)}  # rates 1 and 0: ((0.25)^2 + (0.75)^2) / 2
    assert method.extra_loss(model, ModelOutput(torch.zeros(1, 5), off)).item() == pytest.approx(0.3125)
    model.train()
    out = model(X)
    rates = torch.stack([g.mean() for g in out.gates.values()])
    loss = method.extra_loss(model, out)
    assert torch.allclose(loss, ((rates - 0.75) ** 2).mean())
    loss.backward()  # no classification loss: this gradient comes from the rate loss alone, at initialization
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in model.gate_net.heads)


def test_gate_weight_decay_applies_to_the_gate_network_group_only():
    cfg, method, model = _model(
        "optim.weight_decay=0.0001", "method.adafilter.gate_weight_decay=0.001", "method.adafilter.gate_optimizer=adamw"
    )
    optimizer = build_optimizer(method.param_groups(model), cfg.optim)
    decay = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert decay == {"finetuned": 0.0001, "head": 0.0001, "gate_net": 0.001}
    cfg, method, model = _model("optim.weight_decay=0.0001")
    assert {g["weight_decay"] for g in build_optimizer(method.param_groups(model), cfg.optim).param_groups} == {0.0001}


def test_previous_output_gate_input_reads_the_image_then_each_previous_gated_layer():
    _, _, model = _model("method.adafilter.gate_input=previous_output")
    sites = sorted((m for m in model.features.modules() if isinstance(m, GatedSite)), key=lambda m: m.index)
    assert model.gate_net.projections[0].in_features == 3
    assert [p.in_features for p in model.gate_net.projections[1:]] == [s.layer.out_channels for s in sites[:-1]]
    seen, outputs = [], []
    hooks = [p.register_forward_hook(lambda mod, inp, out: seen.append(inp[0])) for p in model.gate_net.projections]
    hooks += [s.register_forward_hook(lambda mod, inp, out: outputs.append(out.mean((2, 3)))) for s in sites]
    model.eval()(X)
    for hook in hooks:
        hook.remove()
    assert torch.allclose(seen[0], X.mean((2, 3)), atol=1e-6)
    for index in range(1, len(sites)):
        assert torch.allclose(seen[index], outputs[index - 1], atol=1e-5)


def test_previous_output_model_still_equals_the_pretrained_network_at_initialization():
    _, _, model = _model("method.adafilter.gate_input=previous_output", "method.adafilter.gated_layers=all")
    reference = copy.deepcopy(model)
    model.router.forced = "zeros"
    learned = reference.eval()(X).logits
    assert torch.allclose(model.eval()(X).logits, learned, atol=1e-5)  # both banks are still equal
