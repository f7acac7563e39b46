"""Gate collectors on hand-built gates, and the per-image record round trip."""

import numpy as np
import pytest
import torch

from adafilter_lib.adafilter.gate_record import GateRecorder, load_gate_record
from adafilter_lib.adafilter.gates import GateStats
from adafilter_lib.core.model import ModelOutput


def _batches():
    # layer "a": 2 filters, layer "b": 4 filters; 3 images in two batches; classes 0, 1, 0.
    a = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    return [
        (ModelOutput(logits[:2], {"a": a[:2], "b": b[:2]}), labels[:2], torch.tensor([0.1, 0.2])),
        (ModelOutput(logits[2:], {"a": a[2:], "b": b[2:]}), labels[2:], torch.tensor([0.3])),
    ]


def test_gate_stats_numbers_from_known_gates():
    stats = GateStats(num_classes=3)
    for batch in _batches():
        stats(*batch)
    s = stats.compute()
    assert s.layer_names == ["a", "b"]
    # per-image layer fractions: a = [1, .5, 0], b = [.25, 1, .5]
    np.testing.assert_allclose(s.frac_finetuned, [0.5, 1.75 / 3])
    np.testing.assert_allclose(s.frac_std, [np.std([1, 0.5, 0]), np.std([0.25, 1, 0.5])], rtol=1e-6)
    np.testing.assert_allclose(s.class_frac[0], [0.5, 0.375])  # images 0 and 2
    np.testing.assert_allclose(s.class_frac[1], [0.5, 1.0])
    assert np.isnan(s.class_frac[2]).all() and s.class_counts.tolist() == [2, 1, 0]
    np.testing.assert_allclose(s.filter_frequency["a"], [1 / 3, 2 / 3])
    np.testing.assert_allclose(s.filter_frequency["b"], [2 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert s.overall == pytest.approx((3 + 7) / 18)  # 10 ones among 3 images x 6 filters
    assert s.adaptive == pytest.approx(1.0)  # every filter chose differently for some image
    frame = s.to_frame(["zero", "one", "two"])
    assert len(frame) == 2 * 4 and set(frame["group"]) == {"all", "zero", "one", "two"}
    assert frame.query("layer == 'b' and group == 'one'")["frac_finetuned"].item() == 1.0


def test_filters_that_never_change_their_choice_are_not_adaptive():
    stats = GateStats(2)
    gates = {"a": torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])}
    stats(ModelOutput(torch.zeros(2, 2), gates), torch.tensor([0, 1]), torch.zeros(2))
    assert stats.compute().adaptive == pytest.approx(1 / 3)


def test_models_without_gates_give_no_summary():
    stats = GateStats(2)
    stats(ModelOutput(torch.zeros(2, 2), {}), torch.tensor([0, 1]), torch.zeros(2))
    assert stats.compute() is None


@pytest.mark.parametrize("soft", [False, True])
def test_per_image_record_round_trips(tmp_path, soft):
    recorder = GateRecorder()
    batches = _batches()
    if soft:  # e.g. soft gates or the random ablation's evaluation gates
        batches = [(ModelOutput(o.logits, {k: v * 0.5 + 0.2 for k, v in o.gates.items()}), y, l) for o, y, l in batches]
    for batch in batches:
        recorder(*batch)
    recorder.save(tmp_path, ["zero", "one", "two"])
    record = load_gate_record(tmp_path)
    expected_a = torch.cat([b[0].gates["a"] for b in batches]).numpy()
    np.testing.assert_allclose(record.gates["a"], expected_a, atol=1 / 255 if soft else 0)
    assert record.layer_names == ["a", "b"] and record.class_names == ["zero", "one", "two"]
    assert record.index["label"].tolist() == [0, 1, 0] and record.index["prediction"].tolist() == [0, 2, 0]
    np.testing.assert_allclose(record.index["loss"], [0.1, 0.2, 0.3], rtol=1e-6)
    assert record.layer_fractions().shape == (3, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate_index.csv", "gates.npz"]


def test_packed_record_is_compact_for_wide_layers(tmp_path):
    recorder = GateRecorder()
    gates = {"wide": (torch.rand(64, 2048) > 0.5).float()}
    recorder(ModelOutput(torch.zeros(64, 2), gates), torch.zeros(64, dtype=torch.long), torch.zeros(64))
    recorder.save(tmp_path, ["x", "y"])
    assert (tmp_path / "gates.npz").stat().st_size < 64 * 2048 / 8 * 1.2  # about one bit per gate
    np.testing.assert_array_equal(load_gate_record(tmp_path).gates["wide"], gates["wide"].numpy())
