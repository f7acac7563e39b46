"""Regularized fine-tuning baselines: DELTA, BSS and WiSE-FT.

- ``delta`` (Li et al., ICLR 2019): fine-tuning plus ``alpha * sum_l sum_j W_lj * d_lj`` where
  ``d_lj`` is the squared distance between channel ``j`` of stage ``l``'s feature maps of the network
  and of the frozen pretrained network (same images), and ``W_lj`` the channel attention, plus
  ``beta/2 * ||w_head||^2``. Attention ("loss", default): per stage, a softmax over channels of how
  much the loss grows when the channel is dropped, measured with the pretrained features and a
  logistic-regression head fit on ``attention_images`` training images; we use the first-order
  estimate ``-<dL/dA_j, A_j>`` (one backward pass instead of one pass per channel). "uniform": 1/C.
- ``bss`` (Chen et al., NeurIPS 2019, Batch Spectral Shrinkage): fine-tuning plus ``eta`` times the sum
  of the ``k`` smallest squared singular values of the batch's pooled feature matrix (B, D).
- ``wise_ft`` (Wortsman et al., CVPR 2022): fine-tuning, then in ``finalize`` (best weights loaded,
  before the test split) every backbone tensor becomes ``(1 - a) * w_pretrained + a * w_finetuned``
  (BN statistics too). The new head stays fine-tuned: there is no zero-shot head to mix it with.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..core.model import ModelOutput, TransferModel, backbone_spec
from .base import Method

# Stage outputs DELTA compares (the last block of each resolution stage).
TAP_LAYERS = {
    "resnet18": ("layer1", "layer2", "layer3", "layer4"),
    "resnet34": ("layer1", "layer2", "layer3", "layer4"),
    "resnet50": ("layer1", "layer2", "layer3", "layer4"),
    "efficientnet_lite0": ("blocks.1", "blocks.2", "blocks.4", "blocks.6"),
    "mobilenet_v2": ("features.3", "features.6", "features.13", "features.17"),
}


@contextlib.contextmanager
def capture(module: nn.Module, names: tuple[str, ...]) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the outputs of ``module``'s submodules ``names`` during the ``with`` block (hooks removed after)."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = [module.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o)) for n in names]
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


class TapModel(TransferModel):
    """A TransferModel that keeps, from its last forward, the input images, pooled features and stage outputs.

    Shape:
        input (B, 3, H, W); output ModelOutput(logits (B, K), {}); ``pooled`` (B, D); ``taps[name]`` (B, C, H, W).
    """

    def __init__(self, base: TransferModel, tap_names: tuple[str, ...] = ()):
        nn.Module.__init__(self)  # adopt base's modules as they are (no new head, no RNG draws)
        self.features, self.dropout, self.head = base.features, base.dropout, base.head
        self.tap_names = tap_names
        self.images = self.pooled = None
        self.taps: dict[str, torch.Tensor] = {}

    def forward(self, images: torch.Tensor) -> ModelOutput:
        with capture(self.features, self.tap_names if self.training else ()) as taps:
            pooled = self.features(images)  # (B, D)
        self.images, self.pooled, self.taps = images, pooled, taps
        return ModelOutput(self.head(self.dropout(pooled)), {})


def bss_penalty(features: torch.Tensor, k: int) -> torch.Tensor:
    """Sum of the ``k`` smallest squared singular values of ``features`` (B, D)."""
    singular = torch.linalg.svdvals(features.float())  # descending, min(B, D) values
    return (singular[-k:] ** 2).sum()


def delta_distance(
    taps: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], attention: dict[str, torch.Tensor]
) -> torch.Tensor:
    """``0.5 * sum_l sum_j C_l * W_lj * mean_b mean_hw (A - A0)^2`` (uniform attention weighs every channel by 1).

    Shape:
        taps[l], reference[l]: (B, C_l, H, W); attention[l]: (C_l,) summing to 1.
    """
    total = 0.0
    for name, a in taps.items():
        per_channel = ((a.float() - reference[name].float()) ** 2).mean(dim=(0, 2, 3))  # (C,)
        weights = attention[name].to(per_channel.device)
        total = total + 0.5 * len(weights) * (weights * per_channel).sum()
    return total


class Delta(Method):
    name = "delta"

    def build_model(self, model: TransferModel) -> TapModel:
        return TapModel(model, TAP_LAYERS.get(self.cfg.model.backbone, ()))

    def prepare(self, model: TapModel) -> None:
        super().prepare(model)
        # The pretrained network, outside the module tree: frozen and never checkpointed. It runs in the
        # model's mode (batch statistics in training, so the distance is exactly 0 at the start), with
        # BN momentum 0 so that its running statistics stay the pretrained ones.
        self.reference = copy.deepcopy(model.features).eval().requires_grad_(False)
        for module in self.reference.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.0
        opts = self.cfg.method.delta
        if opts.attention == "uniform" or not model.tap_names:
            self.attention = {}
        else:
            self.attention = channel_attention(
                self.reference, model.tap_names, *self._attention_data(model, opts.attention_images)
            )

    def _attention_data(self, model: TapModel, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        from ..data import build_datasets

        spec = backbone_spec(self.cfg.model.backbone)
        dataset = build_datasets(self.cfg.data, spec.mean, spec.std).train_eval
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.cfg.seed))[:count]
        images, labels = zip(*(dataset[int(i)] for i in order))
        device = next(model.parameters()).device
        return torch.stack(images).to(device), torch.tensor(labels, device=device)

    def extra_loss(self, model: TapModel, output: ModelOutput) -> Optional[torch.Tensor]:
        opts = self.cfg.method.delta
        head = 0.5 * opts.beta * sum((p**2).sum() for p in model.head.parameters())
        if not model.taps:
            return head
        self.reference.train(model.training)
        with torch.no_grad(), capture(self.reference, model.tap_names) as reference:
            self.reference(model.images)
        attention = self.attention or {n: torch.full((t.shape[1],), 1.0 / t.shape[1]) for n, t in model.taps.items()}
        return opts.alpha * delta_distance(model.taps, reference, attention) + head


def channel_attention(
    reference: nn.Module, names: tuple[str, ...], images: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """DELTA's channel attention: per stage, softmax over channels of the (first-order) loss increase when dropped.

    A logistic-regression head is fit on the pretrained pooled features of ``images``; then one backward
    pass gives ``dL/dA`` for every stage output ``A``, and dropping channel ``j`` changes the loss by
    about ``-<dL/dA_j, A_j>`` (mean over images).
    """
    from sklearn.linear_model import LogisticRegression

    with torch.no_grad():
        pooled = reference(images).float()
    classes = sorted(set(labels.tolist()))
    clf = LogisticRegression(max_iter=500).fit(pooled.cpu().numpy(), labels.cpu().numpy())
    weight = torch.as_tensor(clf.coef_, dtype=torch.float32, device=images.device)
    bias = torch.as_tensor(clf.intercept_, dtype=torch.float32, device=images.device)
    if len(classes) == 2:  # sklearn keeps one row for two classes: logits (0, z)
        weight, bias = torch.cat([torch.zeros_like(weight), weight]), torch.cat([torch.zeros_like(bias), bias])
    targets = torch.tensor([classes.index(y) for y in labels.tolist()], device=images.device)
    with torch.enable_grad(), capture(reference, names) as taps:
        # The reference's parameters are frozen; an input that requires grad makes the stage outputs differentiable.
        logits = F.linear(reference(images.detach().requires_grad_(True)).float(), weight, bias)
        grads = torch.autograd.grad(F.cross_entropy(logits, targets), [taps[n] for n in names])
    # g is dL/dA of the mean loss, so the sum over images is the mean per-image loss increase.
    return {n: torch.softmax(-(g * taps[n]).float().sum(dim=(0, 2, 3)), dim=0).detach().cpu() for n, g in zip(names, grads)}


class BSS(Method):
    name = "bss"

    def build_model(self, model: TransferModel) -> TapModel:
        return TapModel(model)

    def extra_loss(self, model: TapModel, output: ModelOutput) -> torch.Tensor:
        opts = self.cfg.method.bss
        return opts.eta * bss_penalty(model.pooled, opts.k)


class WiseFT(Method):
    name = "wise_ft"

    def prepare(self, model: TransferModel) -> None:
        super().prepare(model)
        self.reference = {k: v.detach().clone() for k, v in model.features.state_dict().items()}

    @torch.no_grad()
    def finalize(self, model: TransferModel) -> None:
        """Interpolate every floating backbone tensor; ``torch.lerp`` is exact at a = 0 and a = 1."""
        a = self.cfg.method.wise_ft.alpha
        for key, value in model.features.state_dict().items():
            if value.is_floating_point():
                value.copy_(torch.lerp(self.reference[key].to(value.device), value, a))


REGULARIZER_METHODS = (Delta, BSS, WiseFT)
