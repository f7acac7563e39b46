"""image_figures: one image's gate panels show exactly the gates and profile they were given."""

from __future__ import annotations

import numpy as np
import pandas as pd

from adafilter_lib.analysis import image_figures


def test_gate_grid_lays_filters_out_row_by_row():
    grid = image_figures.gate_grid(np.arange(10) / 10)
    assert grid.shape == (3, 4)
    np.testing.assert_allclose(grid.ravel()[:10], np.arange(10) / 10)
    assert np.isnan(grid.ravel()[10:]).all()
    assert image_figures.gate_grid(np.ones(64)).shape == (8, 8)


def test_gate_map_and_inspector_figure():
    gates = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    ax = image_figures.gate_map(gates, "layer1.0.conv1").axes[0]
    assert ax.get_title() == "layer1.0.conv1: 3/5 fine-tuned"
    np.testing.assert_allclose(ax.get_images()[0].get_array().filled(np.nan)[0], [1.0, 0.0, 1.0])
    profile = pd.DataFrame(
        {
            "layer": ["a", "b"] * 3,
            "layer_index": [0, 1] * 3,
            "frac_finetuned": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            "series": ["this image"] * 2 + ["class average"] * 2 + ["dataset average"] * 2,
        }
    )
    image = np.random.default_rng(0).random((8, 8, 3))
    fig = image_figures.inspector_figure(image, "label 3 · predicted 5", profile, gates, "layer1.0.conv1")
    left, middle, right = fig.axes
    np.testing.assert_allclose(left.get_images()[0].get_array(), image)
    assert left.get_title() == "label 3 · predicted 5"
    assert [list(line.get_ydata()) for line in middle.get_lines()] == [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]
    assert right.get_title().endswith("3/5 fine-tuned")
