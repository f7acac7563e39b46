"""viz: figures drawn from hand-built tidy frames show exactly the numbers they were given."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection, QuadMesh
from matplotlib.figure import Figure

from adafilter_lib.analysis import viz
from adafilter_lib.core.errors import KitError


def _curves() -> pd.DataFrame:
    rows = []
    for dataset in ("digits", "mnist5k"):
        for method, offset in (("finetune", 0.0), ("adafilter", 5.0)):
            for split, extra in (("train", 0.0), ("val", 10.0)):
                for epoch in (1, 2, 3):
                    rows.append(
                        {
                            "run_dir": f"{dataset}_{method}",
                            "method": method,
                            "dataset": dataset,
                            "backbone": "r",
                            "seed": 0,
                            "epoch": epoch,
                            "split": split,
                            "top1_err": 50 - 10 * epoch + offset + extra,
                        }
                    )
    return pd.DataFrame(rows)


def _ydata(ax) -> list[list[float]]:
    return [list(np.asarray(line.get_ydata(), dtype=float)) for line in ax.get_lines() if len(line.get_ydata()) == 3]


def test_training_curves_one_panel_per_dataset_with_every_line():
    fig = viz.training_curves(_curves())
    assert isinstance(fig, Figure) and [ax.get_title() for ax in fig.axes[:2]] == ["digits", "mnist5k"]
    for ax in fig.axes[:2]:
        # finetune train [40, 30, 20], val [50, 40, 30]; adafilter 5 higher.
        assert sorted(_ydata(ax)) == [[40, 30, 20], [45, 35, 25], [50, 40, 30], [55, 45, 35]]
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert {"finetune", "adafilter", "val", "train"} <= set(labels)


def test_layer_usage_draws_mean_and_spread_per_run():
    usage = pd.DataFrame(
        {
            "run_dir": "r1",
            "dataset": "d",
            "method": "adafilter",
            "seed": 0,
            "layer": ["a", "b", "a", "b"],
            "layer_index": [0, 1, 0, 1],
            "group": ["all", "all", "0", "0"],
            "frac_finetuned": [0.2, 0.6, 0.9, 0.9],
            "frac_std": [0.1, 0.05, np.nan, np.nan],
        }
    )
    ax = viz.layer_usage(usage).axes[0]
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), [0.2, 0.6])  # class rows are not drawn
    band = next(c for c in ax.collections if isinstance(c, PolyCollection))
    y = band.get_paths()[0].vertices[:, 1]
    assert y.min() == pytest.approx(0.1) and y.max() == pytest.approx(0.65)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]


def test_layer_class_heatmap_cells_equal_the_class_rows():
    rows = [
        {"run_dir": "r", "layer": f"l{i}", "layer_index": i, "group": g, "frac_finetuned": v}
        for i, (g, v) in enumerate([("all", 0.5)])
    ]  # the "all" row must be ignored
    for k, cls in enumerate(["cat", "ant"]):  # class order of the dataset, not alphabetical
        for i in range(3):
            rows.append({"run_dir": "r", "layer": f"l{i}", "layer_index": i, "group": cls, "frac_finetuned": 0.1 * (k * 3 + i)})
    fig = viz.layer_class_heatmap(pd.DataFrame(rows))
    mesh = next(c for c in fig.axes[0].collections if isinstance(c, QuadMesh))
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(2, 3), [[0.0, 0.1, 0.2], [0.3, 0.4, 0.5]])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["cat", "ant"]
    with pytest.raises(KitError, match="one run"):
        viz.layer_class_heatmap(pd.DataFrame(rows).assign(run_dir=["r", "s"] * 3 + ["s"]))


def test_filter_frequency_one_dot_per_filter():
    frequency = pd.DataFrame(
        {
            "layer": ["a", "a", "b", "b", "b"],
            "layer_index": [0, 0, 1, 1, 1],
            "filter": [0, 1, 0, 1, 2],
            "frequency": [0.0, 1.0, 0.25, 0.5, 0.75],
        }
    )
    ax = viz.filter_frequency(frequency).axes[0]
    dots = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections])
    np.testing.assert_allclose(sorted(dots), [0.0, 0.25, 0.5, 0.75, 1.0])


def test_usage_over_epochs_heatmap_is_layers_by_epochs():
    usage = pd.DataFrame(
        {
            "run_dir": "r",
            "epoch": [1, 1, 2, 2],
            "layer": ["a", "b", "a", "b"],
            "layer_index": [0, 1, 0, 1],
            "frac_finetuned": [0.1, 0.2, 0.3, 0.4],
        }
    )
    mesh = next(c for c in viz.usage_over_epochs(usage).axes[0].collections if isinstance(c, QuadMesh))
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(2, 2), [[0.1, 0.3], [0.2, 0.4]])


def test_error_bars_heights_and_std_whiskers():
    table = pd.DataFrame(
        {
            "method": ["finetune", "finetune", "adafilter"],
            "dataset": ["a", "b", "a"],
            "top1_err": [10.0, 20.0, 8.0],
            "top1_err_std": [1.0, np.nan, 0.5],
            "seeds": [3, 1, 2],
        }
    )
    ax = viz.error_bars(table).axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights[:2] == [10.0, 20.0] and heights[2] == 8.0 and np.isnan(heights[3])  # adafilter has no "b" cell
    whiskers = [np.asarray(seg) for c in ax.collections for seg in c.get_segments() if len(seg)]
    spans = sorted(round(float(seg[1, 1] - seg[0, 1]), 6) for seg in whiskers)
    assert spans == [1.0, 2.0]  # ±0.5 and ±1; the one-seed cell gets no whisker
    assert "1–3 per bar" in ax.get_title()


def test_save_figure_writes_a_png_atomically(tmp_path):
    path = viz.save_figure(viz.training_curves(_curves()), tmp_path / "figures" / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]  # no temporary file left behind


def test_missing_columns_and_empty_tables_are_one_line_errors():
    with pytest.raises(KitError, match="missing: split"):
        viz.training_curves(_curves().drop(columns="split"))
    with pytest.raises(KitError, match="empty table"):
        viz.error_bars(pd.DataFrame(columns=["method", "dataset", "top1_err", "top1_err_std"]))


def test_save_figure_honours_the_suffix(tmp_path):
    fig = viz.training_curves(_curves())
    assert viz.save_figure(fig, tmp_path / "a.pdf").read_bytes().startswith(b"%PDF")
    assert b"<svg" in viz.save_figure(fig, tmp_path / "a.svg").read_bytes()[:400]
    assert viz.save_figure(fig, tmp_path / "a.PNG").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(KitError, match="unknown format '.jpeg'"):
        viz.save_figure(fig, tmp_path / "a.jpeg")


def test_pruning_figures_are_figures_without_pyplot_and_save_by_suffix(tmp_path):
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.figure import Figure

    from adafilter_lib.analysis import pruning_figures, viz

    before = plt.get_fignums()
    trials = pd.DataFrame(
        {"state": ["COMPLETE"] * 3, "round": [1, 1, 2], "compression": [1.5, 3.0, 2.0], "val_top1_err": [10.0, 12.0, 13.0]}
    )
    sparsity = pd.DataFrame({"layer": ["a", "b", "c"], "stage": ["s1", "s1", "s2"], "sparsity": [0.1, 0.5, 0.9]})
    sweep = pd.DataFrame({"threshold": [0.0, 0.5], "extra_params_frac": [1.0, 0.4], "top1_err_change": [0.0, 1.5]})
    figures = [
        pruning_figures.front_figure(trials, references={"dense": (1.0, 9.0)}),
        pruning_figures.sparsity_figure(sparsity),
        pruning_figures.compaction_figure(sweep),
    ]
    assert all(isinstance(f, Figure) for f in figures) and plt.get_fignums() == before  # nothing in pyplot's list
    assert pruning_figures.pareto_front(trials)["compression"].tolist() == [1.5, 3.0]  # 2.0 is beaten by 3.0
    assert viz.save_figure(figures[0], tmp_path / "front.svg").read_text().lstrip().startswith("<?xml")
