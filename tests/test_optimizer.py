"""optim.build_optimizer: one rule per parameter group (SGD beside AdamW) behind one optimizer object."""

import copy

import torch

from adafilter_lib.core.config import load_config
from adafilter_lib.core.model import build_transfer_model
from adafilter_lib.core.optim import MixedOptimizer, build_optimizer, build_scheduler
from adafilter_lib.methods import build_method


def _params(seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(4, 3, generator=gen)), torch.nn.Parameter(torch.randn(5, generator=gen))]


def _set_grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def test_each_group_is_stepped_exactly_by_its_own_rule_under_the_schedule():
    cfg = load_config(None, ["optim.lr=0.1", "optim.momentum=0.9", "optim.weight_decay=0.01", "optim.epochs=2"])
    net, gate = _params(0), _params(1)
    mixed = build_optimizer(
        [{"name": "net", "params": net, "lr": 0.1}, {"name": "gate", "params": gate, "lr": 0.01, "optimizer": "adamw"}], cfg.optim
    )
    assert isinstance(mixed, MixedOptimizer) and [g["name"] for g in mixed.param_groups] == ["net", "gate"]
    ref_net, ref_gate = [copy.deepcopy(p) for p in net], [copy.deepcopy(p) for p in gate]
    ref_sgd = torch.optim.SGD(ref_net, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, foreach=True)
    ref_adamw = torch.optim.AdamW(ref_gate, lr=0.01, weight_decay=0.01, foreach=True)
    schedules = [build_scheduler(opt, cfg.optim, steps_per_epoch=2) for opt in (mixed, ref_sgd, ref_adamw)]
    for step in range(4):
        _set_grads(net + gate, step)
        _set_grads(ref_net + ref_gate, step)
        for opt, schedule in zip((mixed, ref_sgd, ref_adamw), schedules):
            opt.step()
            schedule.step()
    assert mixed.param_groups[1]["lr"] == ref_adamw.param_groups[0]["lr"] < 0.01  # the cosine reached the AdamW group
    for p, ref in zip(net + gate, ref_net + ref_gate):
        assert torch.equal(p, ref)


def test_state_dict_round_trip_continues_bit_identically_under_the_schedule():
    cfg = load_config(None, ["optim.lr=0.1", "optim.momentum=0.9", "optim.epochs=2"])

    def make(params):
        optimizer = build_optimizer(
            [
                {"name": "net", "params": params[:1], "lr": 0.1},
                {"name": "gate", "params": params[1:], "lr": 0.01, "optimizer": "adamw"},
            ],
            cfg.optim,
        )
        return optimizer, build_scheduler(optimizer, cfg.optim, steps_per_epoch=2)

    params = _params(0)
    original, original_schedule = make(params)
    for step in range(2):
        _set_grads(params, step)
        original.step()
        original_schedule.step()
    copies = [copy.deepcopy(p) for p in params]
    restored, restored_schedule = make(copies)
    restored.load_state_dict(copy.deepcopy(original.state_dict()))
    restored_schedule.load_state_dict(original_schedule.state_dict())
    for opt, schedule, ps in ((original, original_schedule, params), (restored, restored_schedule, copies)):
        for step in (2, 3):
            _set_grads(ps, step)
            opt.step()
            schedule.step()
    assert [g["lr"] for g in restored.optimizers[1].param_groups] == [g["lr"] for g in original.optimizers[1].param_groups]
    for p, q in zip(params, copies):
        assert torch.equal(p, q)


def test_adafilter_gate_optimizer_puts_exactly_the_gate_network_under_adamw():
    cfg = load_config(None, ["model.backbone=resnet18", "method.name=adafilter", "method.adafilter.gate_optimizer=adamw"])
    method = build_method(cfg)
    model = method.build_model(build_transfer_model("resnet18", 5, pretrained=False))
    method.prepare(model)
    optimizer = build_optimizer(method.param_groups(model), cfg.optim)
    sgd, adamw = optimizer.optimizers
    assert isinstance(sgd, torch.optim.SGD) and isinstance(adamw, torch.optim.AdamW)
    assert {id(p) for g in adamw.param_groups for p in g["params"]} == {id(p) for p in model.gate_net.parameters()}
    assert optimizer.param_groups[0]["name"] == "finetuned"
    default = load_config(None, ["model.backbone=resnet18", "method.name=adafilter"])
    assert isinstance(build_optimizer(build_method(default).param_groups(model), default.optim), torch.optim.SGD)
