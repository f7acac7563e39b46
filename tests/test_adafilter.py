"""AdaFilter conversion: equivalences with the pretrained and fine-tuned networks, trainable set, gradients."""

import copy

import pytest
import torch

from adafilter_lib.adafilter.layers import unfolded_eval
from adafilter_lib.adafilter.network import AdaFilterModel, GatedSite
from adafilter_lib.core.config import load_config
from adafilter_lib.core.model import build_transfer_model
from adafilter_lib.methods import build_method

GATED_COUNTS = {"resnet18": 19, "mobilenet_v2": 50, "efficientnet_lite0": 47}


def _build(backbone="resnet18", *overrides, method="adafilter"):
    cfg = load_config(None, [f"model.backbone={backbone}", f"method.name={method}", *overrides])
    torch.manual_seed(0)
    base = build_transfer_model(backbone, 5, pretrained=False)
    _randomize_bn(base)
    reference = copy.deepcopy(base).eval()
    m = build_method(cfg)
    model = m.build_model(base)
    m.prepare(model)
    return cfg, m, model, reference


def _randomize_bn(net):
    """Non-trivial BN statistics so that equalities are not met by accident."""
    gen = torch.Generator().manual_seed(1)
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(0.1 * torch.randn(mod.num_features, generator=gen))
            mod.running_var.copy_(1 + 0.2 * torch.rand(mod.num_features, generator=gen))


def _drift(model):
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in model.gated_layers().values():
            layer.weight_finetuned.add_(0.05 * torch.randn(layer.weight_finetuned.shape, generator=gen))
            layer.bn_finetuned.bias.add_(0.05)


@pytest.mark.parametrize("backbone", list(GATED_COUNTS))
def test_all_pretrained_gates_reproduce_the_pretrained_backbone_exactly(backbone):
    _, _, model, reference = _build(backbone, method="adafilter_all_pretrained")
    assert len(model.gated_layer_names) == GATED_COUNTS[backbone]
    _drift(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), unfolded_eval(model):  # the layer math, bit for bit
        assert torch.equal(model.eval().features(x), reference.features(x))
    with torch.no_grad():  # the folded evaluation step (one conv per gated layer), up to float rounding
        torch.testing.assert_close(model.features(x), reference.features(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backbone", list(GATED_COUNTS))
def test_all_finetuned_gates_reproduce_a_plain_network_with_the_finetuned_filters(backbone):
    _, _, model, reference = _build(backbone, method="adafilter_all_finetuned")
    _drift(model)
    plain = copy.deepcopy(reference)
    with torch.no_grad():
        for (conv_name, bn_name), layer in zip(_pairs(reference), model.gated_layers().values()):
            plain.features.get_submodule(conv_name).weight.copy_(layer.weight_finetuned)
            plain.features.get_submodule(bn_name).load_state_dict(layer.bn_finetuned.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), unfolded_eval(model):
        assert torch.allclose(model.eval()(x).logits, plain(x).logits, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, plain(x).logits, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(model(x).logits, reference(x).logits, atol=1e-3)


def _pairs(reference):
    import re

    from adafilter_lib.adafilter.network import trace_conv_bn_pairs
    from adafilter_lib.core.model import backbone_spec

    pattern = None
    for name in GATED_COUNTS:
        if (
            len([1 for c, _ in trace_conv_bn_pairs(reference.features) if re.search(backbone_spec(name).stage_pattern, c)])
            == GATED_COUNTS[name]
        ):
            pattern = backbone_spec(name).stage_pattern
    return [(c, b) for c, b in trace_conv_bn_pairs(reference.features) if re.search(pattern, c)]


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_at_initialization_learned_gates_give_the_pretrained_output(mode):
    _, _, model, reference = _build("efficientnet_lite0", "method.adafilter.gate_bias_init=0.0")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = model.train(mode == "train")(x)
        expected = reference.train(mode == "train")(x)
    fractions = torch.cat([g.flatten() for g in out.gates.values()]).mean()
    assert 0.05 < fractions < 0.95  # gates really are mixed
    assert torch.allclose(out.logits, expected.logits, atol=1e-5)


def test_exact_trainable_parameters_and_groups():
    _, method, model, _ = _build("resnet18")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    gated = {
        f"features.{name}.layer.{p}"
        for name in model.gated_layer_names
        for p in ("weight_finetuned", "bn_finetuned.weight", "bn_finetuned.bias")
    }
    gate_net = {f"gate_net.{n}" for n, _ in model.gate_net.named_parameters()}
    stem = {"features.conv1.weight", "features.bn1.weight", "features.bn1.bias"}
    assert trainable == gated | gate_net | stem | {"head.weight", "head.bias"}
    assert not any("weight_pretrained" in n for n, _ in model.named_parameters())
    groups = {g["name"]: g for g in method.param_groups(model)}
    assert set(groups) == {"finetuned", "gate_net", "head"}
    assert sum(len(g["params"]) for g in groups.values()) == len(trainable)


def test_pretrained_filters_get_no_gradient_and_stay_bit_identical():
    cfg, method, model, reference = _build("resnet18")
    before = {n: b.clone() for n, b in model.named_buffers() if "weight_pretrained" in n}
    optimizer = torch.optim.SGD(method.param_groups(model), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(3):
        out = model(torch.randn(4, 3, 32, 32))
        torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3])).backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, buffer in model.named_buffers():
        if "weight_pretrained" in name:
            assert torch.equal(buffer, before[name]) and not buffer.requires_grad
    changed = [n for n, l in model.gated_layers().items() if not torch.equal(l.weight_finetuned, l.weight_pretrained)]
    assert changed  # the fine-tuned copies did move


def test_straight_through_gradient_reaches_the_gate_network_once_paths_differ():
    _, _, model, _ = _build("resnet18")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    model.train()
    torch.nn.functional.cross_entropy(model(x).logits, y).backward()
    # identical paths at initialization: the gate gradient is exactly zero (METHODS.md pitfall)
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.gate_net.parameters())
    model.zero_grad()
    _drift(model)
    torch.nn.functional.cross_entropy(model(x).logits, y).backward()
    head_grads = [h.weight.grad.abs().sum() for h in model.gate_net.heads]
    assert all(g > 0 for g in head_grads) and model.gate_net.cell.weight_hh.grad.abs().sum() > 0


@pytest.mark.parametrize("input_grad", [True, False])
def test_gate_input_grad_decides_whether_the_gates_send_gradient_into_the_filters(input_grad):
    _, _, model, _ = _build("resnet18", f"method.adafilter.gate_input_grad={input_grad}")
    _drift(model)
    model.train()
    output = model(torch.randn(4, 3, 32, 32))
    # a loss that reads only the gates: its gradient reaches the filters through the gate network's inputs or not at all
    sum((g * torch.randn_like(g)).sum() for g in output.gates.values()).backward()
    assert model.gate_net.heads[-1].weight.grad.abs().sum() > 0  # the gate network learns either way
    filters = [layer.weight_finetuned.grad for layer in model.gated_layers().values()][:-1]  # the last feeds no gate
    reached = [g is not None and torch.count_nonzero(g) > 0 for g in filters]
    assert all(reached) if input_grad else not any(reached)


def test_returned_gates_are_keyed_binary_and_shaped():
    _, _, model, _ = _build("mobilenet_v2")
    out = model.eval()(torch.randn(3, 3, 32, 32))
    assert list(out.gates) == model.gated_layer_names
    for name, g in out.gates.items():
        assert g.shape == (3, model.gated_layers()[name].out_channels)
        assert set(g.unique().tolist()) <= {0.0, 1.0}


def test_random_gates_are_bernoulli_in_training_and_evaluation():
    _, method, model, _ = _build("resnet18", method="adafilter_random")
    assert {g["name"] for g in method.param_groups(model)} == {"finetuned", "head"}
    for mode in (True, False):
        gates = torch.cat([g.flatten() for g in model.train(mode)(torch.randn(4, 3, 32, 32)).gates.values()])
        assert set(gates.unique().tolist()) == {0.0, 1.0} and abs(gates.mean() - 0.5) < 0.05


def test_usage_penalty_pulls_the_mean_gate_towards_its_target():
    _, method, model, _ = _build("resnet18", "method.adafilter.usage_penalty=2.0", "method.adafilter.usage_target=0.25")
    out = model.train()(torch.randn(2, 3, 32, 32))
    usage = torch.cat([g.flatten() for g in out.gates.values()]).mean()
    assert torch.allclose(method.extra_loss(model, out), 2.0 * (usage - 0.25) ** 2)
    assert isinstance(model, AdaFilterModel) and any(isinstance(m, GatedSite) for m in model.modules())


def test_binarized_gates_are_exactly_binary_with_the_relaxed_gradient():
    from adafilter_lib.adafilter.gate_net import binarize_gates

    logits = torch.tensor([[2.0, -1.0, 0.3, -0.2]], requires_grad=True)
    gates = binarize_gates(logits, training=True)
    assert gates.tolist() == [[1.0, 0.0, 1.0, 0.0]]
    gates.sum().backward()
    assert torch.allclose(logits.grad, torch.sigmoid(logits) * (1 - torch.sigmoid(logits)))
    assert binarize_gates(logits, training=False).tolist() == [[1.0, 0.0, 1.0, 0.0]]
    soft = binarize_gates(logits, training=False, mode="soft")
    assert torch.allclose(soft, torch.sigmoid(logits))


def test_gate_warmup_forces_every_gate_to_one_for_its_epochs_and_travels_with_the_checkpoint():
    _, method, model, _ = _build("resnet18", "method.adafilter.gate_warmup_epochs=2", "method.adafilter.gate_bias_init=-3")
    x = torch.randn(2, 3, 32, 32)

    def gates(net, training):
        return torch.cat([g.flatten() for g in net.train(training)(x).gates.values()])

    for epoch, warm in ((0, True), (1, True), (2, False)):
        method.begin_epoch(model, epoch)
        for training in (True, False):
            # bias -3: learned gates are all 0 here, so all 1 can only come from the warm-up.
            assert gates(model, training).eq(1.0 if warm else 0.0).all(), (epoch, training)
    method.begin_epoch(model, 1)
    checkpoint = copy.deepcopy(model.state_dict())
    method.begin_epoch(model, 2)
    model.load_state_dict(checkpoint)  # a best epoch inside the warm-up is evaluated with its all-ones gates
    assert gates(model, False).eq(1.0).all()
    _, _, plain, _ = _build("resnet18")
    assert "gate_warmup" not in plain.state_dict()  # runs without warm-up keep their state keys


def test_gate_input_pool_matches_average_pooling_in_value_and_gradient():
    from adafilter_lib.adafilter.gate_net import pool_gate_input

    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    reference = x.detach().clone().requires_grad_()
    pooled, expected = pool_gate_input(x), torch.nn.functional.adaptive_avg_pool2d(reference, 1).flatten(1)
    assert pooled.shape == (3, 5) and torch.equal(pooled, expected)
    weights = torch.randn(3, 5)
    (pooled * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.allclose(x.grad, reference.grad, rtol=0, atol=1e-7)
    assert torch.allclose(x.grad[1, 2], torch.full((4, 6), weights[1, 2].item() / 24))


@pytest.mark.parametrize("mode", ["stats", "frozen"])
def test_precise_bn_recomputes_pretrained_bn_statistics_only_in_stats_mode(mode):
    from adafilter_lib.core.engine import recalibrate_bn

    # every conv gated (stem too), so that no ungated BN normalizes with batch statistics below
    cfg, method, model, reference = _build(
        "resnet18", f"method.adafilter.bn_pretrained={mode}", "method.adafilter.gated_layers=all"
    )
    layers = model.gated_layers()
    imagenet = {n: (l.bn_pretrained.running_mean.clone(), l.bn_pretrained.running_var.clone()) for n, l in layers.items()}
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])) for _ in range(2)]
    recalibrate_bn(model, method, batches, torch.device("cpu"), amp=False, channels_last=False)
    kept = [
        torch.equal(l.bn_pretrained.running_mean, imagenet[n][0]) and torch.equal(l.bn_pretrained.running_var, imagenet[n][1])
        for n, l in layers.items()
    ]
    assert all(kept) if mode == "frozen" else not any(kept)
    # frozen: the pretrained path normalizes with ImageNet statistics in training mode too, so with
    # every gate 0 a training-mode forward equals the pretrained backbone in evaluation mode
    if mode == "frozen":
        cfg.method.adafilter.gates = "zeros"
        model.router.cfg = cfg.method.adafilter
        model.train()
        x = torch.randn(4, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(model.features(x), reference.features(x), atol=1e-5)
