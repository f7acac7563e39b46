"""GatedConv2d against references: the naive per-example loop, the plain pretrained and fine-tuned convs."""

import pytest
import torch
from torch import nn

from adafilter_lib.adafilter.layers import GatedConv2d, reference_gated_conv, unfolded_eval


def _conv_bn(c_in, c_out, kernel=3, stride=1, groups=1, bias=False, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=bias)
    bn = nn.BatchNorm2d(c_out)
    with torch.no_grad():  # non-trivial BN state, as after ImageNet training
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.2, 0.2), bn.running_var.uniform_(0.5, 2.0)
    return conv, bn


LAYOUTS = {
    "plain": dict(c_in=4, c_out=6),
    "strided": dict(c_in=4, c_out=6, stride=2),
    "grouped": dict(c_in=4, c_out=6, groups=2),
    "depthwise": dict(c_in=6, c_out=6, groups=6),
    "pointwise+bias": dict(c_in=4, c_out=5, kernel=1, bias=True),
}


def _drift(layer):
    with torch.no_grad():
        layer.weight_finetuned.add_(0.3 * torch.randn_like(layer.weight_finetuned))
        layer.bn_finetuned.weight.add_(0.2)
        layer.bn_finetuned.running_mean.add_(0.1)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gates_select_between_the_plain_pretrained_and_finetuned_layers(layout):
    conv, bn = _conv_bn(**LAYOUTS[layout])
    layer = GatedConv2d(conv, bn).eval()
    _drift(layer)
    x = torch.randn(3, conv.in_channels, 8, 8)
    zeros, ones = torch.zeros(3, conv.out_channels), torch.ones(3, conv.out_channels)
    with torch.no_grad(), unfolded_eval(layer):  # bit for bit on the layer's own path (folding: its own test)
        pretrained = bn.eval()(conv(x))
        finetuned = layer.plain_finetuned().eval()(x)
        assert torch.equal(layer(x, zeros), pretrained)  # bit for bit
        assert torch.equal(layer(x, ones), finetuned)
        mixed = (torch.rand(3, conv.out_channels) > 0.5).float()
        assert torch.allclose(layer(x, mixed), reference_gated_conv(layer, x, mixed))


def test_training_mode_matches_the_reference_loop_with_batch_statistics():
    conv, bn = _conv_bn(4, 6)
    layer = GatedConv2d(conv, bn).train()
    _drift(layer)
    x = torch.randn(5, 4, 8, 8)
    gates = (torch.rand(5, 6) > 0.5).float()
    ref_layer = GatedConv2d(conv, bn).train()
    ref_layer.load_state_dict(layer.state_dict())
    assert torch.allclose(layer(x, gates), reference_gated_conv(ref_layer, x, gates), atol=1e-6)
    assert torch.allclose(layer.bn_pretrained.running_mean, ref_layer.bn_pretrained.running_mean)


def test_at_initialization_any_gates_give_the_pretrained_output():
    conv, bn = _conv_bn(4, 6)
    layer = GatedConv2d(conv, bn).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = bn.eval()(conv(x))
        with unfolded_eval(layer):
            for _ in range(3):
                assert torch.equal(layer(x, (torch.rand(2, 6) > 0.5).float()), expected)
        folded = layer(x, torch.zeros(2, 6))  # both folded banks are equal too: every gate choice gives one output
        for _ in range(3):
            assert torch.equal(layer(x, (torch.rand(2, 6) > 0.5).float()), folded)
        torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)


def test_only_finetuned_filters_and_bn_learn_and_gradients_reach_the_gates():
    conv, bn = _conv_bn(4, 6)
    layer = GatedConv2d(conv, bn).train()
    _drift(layer)
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {
        "weight_finetuned",
        "bn_finetuned.weight",
        "bn_finetuned.bias",
    }
    assert "weight_pretrained" in dict(layer.named_buffers())
    gates = torch.full((2, 6), 0.5, requires_grad=True)
    layer(torch.randn(2, 4, 8, 8), gates).square().sum().backward()
    assert layer.weight_finetuned.grad.abs().sum() > 0 and gates.grad.abs().sum() > 0
    assert layer.bn_pretrained.weight.grad is None


def test_gate_zero_sends_no_gradient_to_finetuned_filters():
    conv, bn = _conv_bn(4, 6)
    layer = GatedConv2d(conv, bn).train()
    layer(torch.randn(2, 4, 8, 8), torch.zeros(2, 6)).square().sum().backward()
    assert torch.count_nonzero(layer.weight_finetuned.grad) == 0


@pytest.mark.parametrize("mode", ["stats", "frozen", "trainable"])
def test_pretrained_bn_modes(mode):
    conv, bn = _conv_bn(4, 6)
    layer = GatedConv2d(conv, bn, bn_pretrained=mode).train()
    before = layer.bn_pretrained.running_mean.clone()
    layer(torch.randn(4, 4, 8, 8), torch.zeros(4, 6))
    changed = not torch.equal(before, layer.bn_pretrained.running_mean)
    assert changed == (mode != "frozen")
    assert layer.bn_pretrained.weight.requires_grad == (mode == "trainable")


def test_without_gated_bn_one_trainable_bn_follows_the_mix():
    conv, bn = _conv_bn(4, 6)
    layer = GatedConv2d(conv, bn, gated_bn=False).eval()
    assert layer.bn_pretrained is None
    x, g = torch.randn(2, 4, 8, 8), (torch.rand(2, 6) > 0.5).float()
    with torch.no_grad():
        assert torch.allclose(layer(x, g), bn.eval()(conv(x)))  # equal paths at init


@pytest.mark.parametrize("layout", ["plain", "depthwise", "pointwise+bias"])
def test_frozen_pretrained_bn_folded_into_the_conv_equals_conv_then_bn(layout):
    conv, bn = _conv_bn(**LAYOUTS[layout])
    layer = GatedConv2d(conv, bn, bn_pretrained="frozen").train()
    x = torch.randn(3, conv.in_channels, 8, 8, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    folded = layer._pretrained_path(x)
    unfolded = bn.eval()(conv(x_ref))  # the pretrained conv and BN, ImageNet statistics
    assert torch.allclose(folded, unfolded, atol=1e-5)
    weights = torch.randn_like(folded)
    (folded * weights).sum().backward()
    (unfolded * weights).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    # gates all 0 give exactly the pretrained path
    assert torch.equal(layer(x.detach(), torch.zeros(3, conv.out_channels)), layer._pretrained_path(x.detach()))


@pytest.mark.parametrize("mode", ["stats", "frozen", "trainable"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_evaluation_folds_both_bns_into_the_convs_and_equals_the_unfolded_layer(layout, mode):
    conv, bn = _conv_bn(**LAYOUTS[layout])
    layer = GatedConv2d(conv, bn, bn_pretrained=mode).eval()
    _drift(layer)
    x = torch.randn(3, LAYOUTS[layout]["c_in"], 9, 9)
    gates = torch.rand(3, layer.out_channels)  # soft gates too: the mix is the same lerp
    assert layer._foldable()
    folded = layer(x, gates)
    layer.fold_eval_bn = False
    unfolded = layer(x, gates)
    torch.testing.assert_close(folded, unfolded, rtol=1e-5, atol=1e-5)
    layer.fold_eval_bn = True
    hard = (gates > 0.5).float()
    torch.testing.assert_close(layer(x, hard), reference_gated_conv(layer, x, hard), rtol=1e-5, atol=1e-5)
    assert not layer.train()._foldable()  # training normalizes with batch statistics: nothing to fold


@pytest.mark.parametrize("layout", ["plain", "depthwise", "grouped"])
def test_folded_evaluation_keeps_channels_last_and_equals_the_unfolded_layer(layout):
    conv, bn = _conv_bn(**LAYOUTS[layout])
    layer = GatedConv2d(conv, bn).eval().to(memory_format=torch.channels_last)
    _drift(layer)
    x = torch.randn(2, LAYOUTS[layout]["c_in"], 9, 9).contiguous(memory_format=torch.channels_last)
    gates = (torch.rand(2, layer.out_channels) > 0.5).float()
    with torch.no_grad():
        folded = layer(x, gates)
        with unfolded_eval(layer):
            unfolded = layer(x, gates)
    assert folded.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(folded, unfolded, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["pointwise+bias", "depthwise", "plain"])
def test_folded_evaluation_runs_under_bf16_autocast_and_stays_close(layout):
    # autocast makes the convs' outputs bf16 while gates and folded filters are float32: the mix must follow
    conv, bn = _conv_bn(**LAYOUTS[layout])
    layer = GatedConv2d(conv, bn).eval()
    _drift(layer)
    x = torch.randn(2, LAYOUTS[layout]["c_in"], 9, 9)
    gates = (torch.rand(2, layer.out_channels) > 0.5).float()
    with torch.no_grad():
        exact = layer(x, gates)
        for dtype in (torch.float32, torch.bfloat16):  # the image itself, or an earlier layer's bf16 output
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = layer(x.to(dtype), gates)
            torch.testing.assert_close(low.float(), exact, rtol=0.05, atol=0.05)
    assert layer._foldable()
