"""LP-FT and surgical fine-tuning: backbone stages, exactly what trains in each phase and stage, the frozen part
bit-exact after training, and the per-phase learning-rate schedule."""

import math

import pytest
import torch
import torch.nn.functional as F

from adafilter_lib.core.config import load_config
from adafilter_lib.core.errors import KitError
from adafilter_lib.core.model import backbone_spec, build_transfer_model
from adafilter_lib.core.optim import build_optimizer, build_scheduler
from adafilter_lib.core.stages import module_stages
from adafilter_lib.methods import build_method
from adafilter_lib.training.setup import prepare_run
from adafilter_lib.training.trainer import fit


def _stages(backbone):
    torch.manual_seed(0)
    model = build_transfer_model(backbone, 5, pretrained=False)
    return model, module_stages(model.features, backbone_spec(backbone).stage_pattern)


@pytest.mark.parametrize(
    "backbone, expected",
    [
        ("resnet18", ["stem", "layer1", "layer2", "layer3", "layer4"]),
        ("efficientnet_lite0", ["stem", *[f"blocks.{i}" for i in range(7)], "head_conv"]),
        ("mobilenet_v2", ["stem", *[f"features.{i}" for i in range(1, 18)], "head_conv"]),
    ],
)
def test_every_backbone_parameter_lies_in_exactly_one_stage_in_forward_order(backbone, expected):
    model, stages = _stages(backbone)
    assert list(stages) == expected
    owned = [
        f"{m}.{p}" for names in stages.values() for m in names for p, _ in model.features.get_submodule(m).named_parameters()
    ]
    assert sorted(owned) == sorted(n for n, _ in model.features.named_parameters())  # each once, none left out


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("stage", ["stem", "layer1", "layer3", "layer4"])
def test_surgical_trains_exactly_its_stage_and_the_head(stage):
    cfg = load_config(None, ["method.name=surgical", f"method.surgical.stage={stage}", "model.backbone=resnet18"])
    model, stages = _stages("resnet18")
    build_method(cfg).prepare(model)
    expected = {f"features.{m}.{p}" for m in stages[stage] for p, _ in model.features.get_submodule(m).named_parameters()}
    assert _trainable(model) == expected | {"head.weight", "head.bias"}


def test_surgical_names_the_valid_stages_of_an_unknown_one():
    cfg = load_config(None, ["method.name=surgical", "method.surgical.stage=blocks.3", "model.backbone=resnet18"])
    model, _ = _stages("resnet18")
    with pytest.raises(KitError, match="layer2"):
        build_method(cfg).prepare(model)


@pytest.mark.parametrize("frozen_bn_stats", [True, False])
def test_surgical_leaves_the_frozen_part_bit_exact_after_training(tiny_overrides, frozen_bn_stats):
    cfg = load_config(
        None,
        tiny_overrides
        + ["method.name=surgical", "method.surgical.stage=layer2", f"method.surgical.frozen_bn_stats={frozen_bn_stats}"],
    )
    _, _, initial = prepare_run(cfg)  # the same seeded start fit trains from
    start = {k: v.clone() for k, v in initial.state_dict().items()}
    fit(cfg, progress=False)
    best = torch.load(cfg.run_dir() / "best.pt", weights_only=True)
    changed = {k for k in start if not torch.equal(start[k], best[k])}
    trained = {k for k in changed if k.startswith(("features.layer2.", "head."))}
    assert trained and "head.weight" in trained and any(k.endswith("conv1.weight") for k in trained)
    outside = changed - trained
    if frozen_bn_stats:
        assert outside == set()  # weights and running statistics of every other stage
    else:  # frozen weights, but the other stages' BNs followed the digits' statistics
        assert outside and all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked") for k in outside)


def _lp_ft(*overrides):
    cfg = load_config(
        None,
        [
            "method.name=lp_ft",
            "method.lp_ft.probe_epochs=2",
            "method.lp_ft.probe_lr=0.2",
            "optim.epochs=4",
            "optim.lr=0.01",
            "optim.head_lr=0.1",
            "model.backbone=resnet18",
            *overrides,
        ],
    )
    torch.manual_seed(0)
    model = build_transfer_model("resnet18", 4, pretrained=False)
    method = build_method(cfg)
    method.prepare(model)
    return cfg, model, method


def test_lp_ft_probes_with_a_frozen_backbone_then_fine_tunes_everything():
    cfg, model, method = _lp_ft()
    optimizer = build_optimizer(method.param_groups(model), cfg.optim)
    steps = 3
    scheduler = build_scheduler(optimizer, cfg.optim, steps)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    start = {k: v.clone() for k, v in model.features.state_dict().items()}
    rates = []
    for epoch in range(cfg.optim.epochs):
        method.begin_epoch(model, epoch)
        method.train_mode(model)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images).logits, labels).backward()
            rates.append({g["name"]: g["lr"] for g in optimizer.param_groups})
            if epoch < 2:
                assert all(p.grad is None for p in model.features.parameters())
                assert all(p.grad is not None for p in model.head.parameters())
            else:
                assert all(p.grad is not None for p in model.parameters())
            optimizer.step()
            scheduler.step()
        if epoch == 1:  # after the probe: weights and BN statistics as pretrained, no optimizer state
            assert all(torch.equal(start[k], v) for k, v in model.features.state_dict().items())
            assert not any(optimizer.state[p] for p in model.features.parameters())
    assert not torch.equal(start["conv1.weight"], model.features.conv1.weight)
    # each phase restarts the cosine over its own 6 steps: probe at probe_lr, then optim.lr / optim.head_lr
    cosine = [0.5 * (1 + math.cos(math.pi * s / 6)) for s in range(6)]
    assert [r["backbone"] for r in rates] == pytest.approx([0.0] * 6 + [0.01 * c for c in cosine])
    assert [r["head"] for r in rates] == pytest.approx([0.2 * c for c in cosine] + [0.1 * c for c in cosine])


def test_lp_ft_needs_a_fine_tuning_epoch_after_the_probe():
    with pytest.raises(KitError, match="probe_epochs"):
        load_config(None, ["method.name=lp_ft", "method.lp_ft.probe_epochs=4", "optim.epochs=4"])


def test_an_lp_ft_run_records_the_probe_and_resumes_into_the_second_phase(tiny_overrides, tmp_path):
    overrides = tiny_overrides + ["method.name=lp_ft", "method.lp_ft.probe_epochs=1", "optim.epochs=3"]
    reference = fit(load_config(None, overrides + [f"runs_root={tmp_path}/ref"]), progress=False)
    cfg = load_config(None, overrides + [f"runs_root={tmp_path}/killed"])

    class Kill(Exception):
        pass

    def kill_after_probe(epoch, record):
        assert record["train_lr"] == 0.0  # the backbone's rate in the probe (the first group's is recorded)
        raise Kill

    with pytest.raises(Kill):
        fit(cfg, progress=False, on_epoch_end=kill_after_probe)
    resumed = fit(cfg, resume=True, progress=False)
    assert resumed["top1_err"] == reference["top1_err"] and resumed["val_top1_err"] == reference["val_top1_err"]


def test_adafilter_gated_in_one_stage_gates_its_convs_and_freezes_the_rest(tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["method.name=adafilter", "method.adafilter.gated_stage=layer3"])
    method, _, model = prepare_run(cfg)
    method.prepare(model)
    layers = model.gated_layers()
    assert sorted(layers) == sorted(
        n
        for n, m in build_transfer_model("resnet18", 10, pretrained=False).features.named_modules()
        if n.startswith("layer3.") and isinstance(m, torch.nn.Conv2d)
    )  # both blocks' convs and the downsample conv, nothing else
    in_gated = {f"features.{name}.layer.{p}" for name, layer in layers.items() for p, _ in layer.named_parameters()}
    trainable = _trainable(model)
    assert {n for n in trainable if n.startswith("features.")} == {
        n for n in in_gated if ".bn_pretrained." not in n
    }  # the fine-tuned bank and its BN (the pretrained BN's affine stays frozen, bn_pretrained=stats)
    assert {n for n in trainable if not n.startswith("features.")} == {
        n for n, _ in model.named_parameters() if n.startswith(("gate_net.", "head."))
    }

    start = {k: v.clone() for k, v in model.state_dict().items()}
    fit(cfg, progress=False)
    best = torch.load(cfg.run_dir() / "best.pt", weights_only=True)
    changed = {k for k in start if not torch.equal(start[k], best[k])}
    assert changed and all(k.startswith(("features.layer3.", "gate_net.", "head.")) for k in changed)
    assert any(k.startswith("gate_net.") for k in changed)


def test_adafilter_names_the_valid_stages_of_an_unknown_gated_stage(tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["method.name=adafilter", "method.adafilter.gated_stage=blocks.2"])
    with pytest.raises(KitError, match="layer4"):
        prepare_run(cfg)
