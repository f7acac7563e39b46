"""Mean per-class error from hand-built logits, and its place in a run's summary."""

import pytest
import torch

from adafilter_lib.core.class_metrics import ClassErrors
from adafilter_lib.core.model import ModelOutput
from adafilter_lib.training.trainer import fit


def test_mean_per_class_error_weighs_classes_not_images():
    hook = ClassErrors(3)
    logits = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0]])  # predicts 0, 0, 1, 1
    hook(ModelOutput(logits, {}), torch.tensor([0, 0, 0, 1]), torch.zeros(4))
    hook(ModelOutput(torch.tensor([[5.0, 0, 0]]), {}), torch.tensor([1]), torch.zeros(1))
    # class 0: 1 of 3 wrong; class 1: 1 of 2 wrong; class 2 absent. Top-1 would be 2/5 = 40 %.
    assert hook.mean_class_err() == pytest.approx(100 * (1 / 3 + 1 / 2) / 2)
    assert ClassErrors(2).mean_class_err() is None


def test_summary_holds_the_mean_per_class_test_error(tiny_cfg):
    summary = fit(tiny_cfg, progress=False)
    assert 0.0 <= summary["test_mean_class_err"] <= 100.0
    # digits' test split is nearly balanced, so the two measures are close but computed apart
    assert abs(summary["test_mean_class_err"] - summary["top1_err"]) < 5.0
