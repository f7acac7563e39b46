"""GateInspector on a real tiny AdaFilter run: what it displays is exactly the record's slice."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from adafilter_lib.adafilter.gate_record import load_gate_record
from adafilter_lib.analysis import widgets
from adafilter_lib.analysis.widgets import ORDERS, GateInspector
from adafilter_lib.core.errors import KitError
from adafilter_lib.core.model import backbone_spec
from adafilter_lib.data import build_datasets
from adafilter_lib.studies import notebook_grid

COPY = "digits__adafilter__copy"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs_root(smoke_run, tmp_path_factory):
    """The smoke run plus a copy whose every prediction is class 0 and which has no test image of class 9."""
    root = tmp_path_factory.mktemp("inspector_runs")
    shutil.copytree(smoke_run, root / smoke_run.name)
    shutil.copytree(smoke_run, root / COPY)
    index = pd.read_csv(root / COPY / "gate_index.csv")
    index["prediction"] = 0
    index.loc[index.label == 9, "label"] = 8
    index.to_csv(root / COPY / "gate_index.csv", index=False)
    return root


@pytest.fixture
def inspector(runs_root, smoke_run):
    return GateInspector(runs_root, run=smoke_run.name)


def _index(run_dir) -> pd.DataFrame:
    return pd.read_csv(run_dir / "gate_index.csv")


def test_opens_on_the_first_image_with_its_label_and_prediction(inspector, smoke_run):
    index, names = _index(smoke_run), load_gate_record(smoke_run).class_names
    assert list(inspector.run_picker.options) == [COPY, smoke_run.name]
    shown = inspector.shown
    assert (shown["image_id"], shown["label"], shown["prediction"]) == (0, names[index.label[0]], names[index.prediction[0]])
    assert f"prediction <b class='gi-prediction'>{names[index.prediction[0]]}</b>" in inspector.caption.value
    assert f"(1 of {len(index)})" in inspector.caption.value
    assert inspector.renders == 1 and inspector.figure.value[:8] == PNG


def test_profile_gate_map_and_image_are_the_records_slices(inspector, smoke_run):
    record = load_gate_record(smoke_run)
    fractions, labels = record.layer_fractions(), record.index.label.to_numpy()
    cfg = notebook_grid.smoke_config(smoke_run.parent, "adafilter")
    spec = backbone_spec(cfg.model.backbone)
    test = build_datasets(cfg.data, spec.mean, spec.std).test
    last = record.layer_names[-1]
    for position, layer in [(0, record.layer_names[0]), (7, last), (123, last)]:
        shown = inspector.select(layer=layer, position=position)
        i = shown["image_id"]
        assert i == position  # image-id order
        profile = shown["profile"].pivot(index="layer_index", columns="series", values="frac_finetuned")
        np.testing.assert_allclose(profile["this image"], fractions[i])
        np.testing.assert_allclose(profile["class average"], fractions[labels == labels[i]].mean(axis=0))
        np.testing.assert_allclose(profile["dataset average"], fractions.mean(axis=0))
        np.testing.assert_array_equal(shown["gates"], record.gates[layer][i])
        expected = test[i][0].numpy().transpose(1, 2, 0) * np.array(spec.std) + np.array(spec.mean)
        np.testing.assert_allclose(shown["image"], expected, atol=1e-6)
    assert inspector.shown["gates"].shape == (512,)  # layer4's last conv of a ResNet-18


def test_orders_and_class_filter(inspector, smoke_run):
    index = _index(smoke_run)
    inspector.select(order="loss, highest first")
    np.testing.assert_array_equal(inspector.view_ids, index.sort_values("loss", ascending=False, kind="stable").image_id)
    inspector.select(order="fine-tuned fraction, lowest first")
    np.testing.assert_array_equal(inspector.view_ids, index.sort_values("frac_finetuned", kind="stable").image_id)
    inspector.select(order="misclassified first")
    wrong = (index.label != index.prediction).to_numpy()[inspector.view_ids]
    assert wrong[: wrong.sum()].all() and not wrong[wrong.sum() :].any() and 0 < wrong.sum() < len(index)
    shown = inspector.select(class_name="3", order="loss, highest first")
    threes = index[index.label == 3].sort_values("loss", ascending=False, kind="stable").image_id
    np.testing.assert_array_equal(inspector.view_ids, threes)
    assert shown["image_id"] == threes.iloc[0] and shown["label"] == "3" and inspector.position.max == len(threes) - 1


def test_previous_and_next_buttons_step_through_the_view(inspector):
    inspector.select(order="loss, highest first")
    inspector.next_button.click()
    inspector.next_button.click()
    assert inspector.shown["image_id"] == inspector.view_ids[2]
    for _ in range(3):
        inspector.prev_button.click()
    assert inspector.position.value == 0 and inspector.shown["image_id"] == inspector.view_ids[0]


def test_record_and_split_are_loaded_once_and_each_change_draws_once(runs_root, smoke_run, monkeypatch):
    calls = {"record": 0, "data": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(widgets, "load_gate_record", counted("record", widgets.load_gate_record))
    monkeypatch.setattr(widgets, "build_datasets", counted("data", widgets.build_datasets))
    inspector = GateInspector(runs_root, run=smoke_run.name)
    changes = [
        dict(position=5),
        dict(class_name="2"),
        dict(order=ORDERS[2]),
        dict(layer="layer3.0.conv1"),
        dict(position=3),
        dict(class_name="all classes"),
        dict(order=ORDERS[4]),
    ]
    for change in changes:
        inspector.select(**change)
    assert calls == {"record": 1, "data": 1}
    assert inspector.renders == 1 + len(changes)
    inspector.select(run=COPY)
    assert calls == {"record": 2, "data": 2} and inspector.renders == 2 + len(changes)


def test_switching_run_and_a_class_without_images(inspector):
    shown = inspector.select(run=COPY)
    assert shown["run"] == COPY and shown["prediction"] == "0" and shown["image_id"] == 0
    assert inspector.class_picker.value == "all classes" and inspector.order_picker.value == ORDERS[0]
    shown = inspector.select(class_name="9")
    assert shown["image_id"] is None and "no test image of class <b>9</b>" in inspector.caption.value
    assert inspector.figure.value == b""
    assert inspector.select(class_name="8")["label"] == "8"


def test_bad_selections_are_one_line_errors(inspector, runs_root, tmp_path):
    with pytest.raises(KitError, match="unknown class 'cat'"):
        inspector.select(class_name="cat")
    with pytest.raises(KitError, match="position 100000 is out of range"):
        inspector.select(position=100_000)
    with pytest.raises(KitError, match="unknown AdaFilter run 'nope'"):
        GateInspector(runs_root, run="nope")
    with pytest.raises(KitError, match="does not exist"):
        GateInspector(tmp_path / "missing")


def test_runs_of_one_name_in_different_recipe_folders_are_both_offered(smoke_run, tmp_path):
    for recipe in ("defaults", "gates_adamw"):
        shutil.copytree(smoke_run, tmp_path / "adafilter" / recipe / smoke_run.name)
    inspector = GateInspector(tmp_path, run=f"adafilter/gates_adamw/{smoke_run.name}")
    assert list(inspector.run_picker.options) == [
        f"adafilter/defaults/{smoke_run.name}",
        f"adafilter/gates_adamw/{smoke_run.name}",
    ]
    assert inspector.run_picker.value == f"adafilter/gates_adamw/{smoke_run.name}"
