"""The gate inspector: browse an AdaFilter run's test images and the filters each one fine-tuned.

``GateInspector(runs_root)`` is an ipywidgets 8 ``VBox``; display it in a notebook. Pick a run, then
an image (slider or previous/next, optionally only one class, ordered by image id, by loss, by
fine-tuned fraction or misclassified first). It shows the image with its label and prediction, the
image's per-layer fraction of fine-tuned filters against its class average and the dataset average,
and the image's gate of every filter of one chosen layer.

Like fastai's ``ImageClassifierCleaner``, everything is precomputed when a run is picked (the
per-image record is read once: gates, per-layer fractions, class averages, every sort order);
callbacks only slice those arrays. The one thing built lazily is the image itself: the run's test
split is rebuilt from its ``config.yaml`` on first use and then indexed one image per callback.

Tests and scripts drive it without a browser: :meth:`GateInspector.select` sets the controls,
:attr:`GateInspector.shown` says what is displayed (``image``, ``profile`` and ``gates`` hold the plotted data).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Optional

import ipywidgets as widgets
import numpy as np

from ..adafilter.gate_record import load_gate_record
from ..core.config import load_config
from ..core.errors import KitError, unknown_name
from ..core.model import backbone_spec
from ..core.runs import CONFIG
from ..data import build_datasets
from . import image_figures, records, viz

ALL_CLASSES = "all classes"
ORDERS = (
    "image id",
    "loss, highest first",
    "fine-tuned fraction, highest first",
    "fine-tuned fraction, lowest first",
    "misclassified first",
)


class GateInspector(widgets.VBox):
    """Per-image gate inspector for the AdaFilter runs under ``runs_root`` (see the module docstring).

    Args:
        runs_root: folder of run directories; every finished run with a ``gates.npz`` is offered.
        run: the run to open first, as its path below ``runs_root`` (its name for a flat folder; default: the first).
    """

    def __init__(self, runs_root: str | Path, run: Optional[str] = None):
        # keyed by the path below runs_root: a study's runs share names across its recipe folders
        self.run_dirs = {path.relative_to(runs_root).as_posix(): path for path in records.gated_runs(runs_root)}
        if run is not None and run not in self.run_dirs:
            raise unknown_name("AdaFilter run", run, self.run_dirs)
        wide = {"description_width": "initial"}
        self.run_picker = widgets.Dropdown(
            options=list(self.run_dirs),
            value=run or next(iter(self.run_dirs)),
            description="run",
            style=wide,
            layout=widgets.Layout(width="520px"),
        )
        self.class_picker = widgets.Dropdown(description="class", style=wide)
        self.order_picker = widgets.Dropdown(options=ORDERS, value=ORDERS[0], description="order", style=wide)
        self.position = widgets.IntSlider(min=0, max=0, description="image", continuous_update=False, style=wide)
        self.prev_button = widgets.Button(description="◀ previous", layout=widgets.Layout(width="110px"))
        self.next_button = widgets.Button(description="next ▶", layout=widgets.Layout(width="110px"))
        self.layer_picker = widgets.Dropdown(description="gate map layer", style=wide)
        self.caption = widgets.HTML()
        self.figure = widgets.Image(format="png")
        for widget, name in [
            (self.run_picker, "run"),
            (self.class_picker, "class"),
            (self.order_picker, "order"),
            (self.position, "position"),
            (self.prev_button, "prev"),
            (self.next_button, "next"),
            (self.layer_picker, "layer"),
            (self.caption, "caption"),
            (self.figure, "figure"),
        ]:
            widget.add_class(f"gate-inspector-{name}")  # stable hooks for the browser test
        super().__init__(
            [
                self.run_picker,
                widgets.HBox([self.class_picker, self.order_picker]),
                widgets.HBox([self.prev_button, self.position, self.next_button]),
                self.layer_picker,
                self.caption,
                self.figure,
            ]
        )
        self.add_class("gate-inspector")
        self.renders = 0  # how many times the display was redrawn (tests check that one change draws once)
        self.shown: dict = {}
        self._quiet = False  # set while a callback adjusts other controls, so they do not redraw too
        self._load(self.run_picker.value)
        self.run_picker.observe(lambda change: self._load(change["new"]), "value")
        self.class_picker.observe(lambda change: self._update_view(), "value")
        self.order_picker.observe(lambda change: self._update_view(), "value")
        self.position.observe(lambda change: self._render(), "value")
        self.layer_picker.observe(lambda change: self._render(), "value")
        self.prev_button.on_click(lambda button: self._step(-1))
        self.next_button.on_click(lambda button: self._step(+1))

    def _load(self, name: str) -> None:
        """Read one run's record and precompute everything the callbacks slice."""
        run_dir = self.run_dirs[name]
        self.record = load_gate_record(run_dir)
        index = self.record.index
        self._labels = index["label"].to_numpy()
        self._preds = index["prediction"].to_numpy()
        self._losses = index["loss"].to_numpy()
        self._frac = index["frac_finetuned"].to_numpy()
        self._fractions = self.record.layer_fractions()  # (N, L)
        classes = len(self.record.class_names)
        counts = np.bincount(self._labels, minlength=classes)
        sums = np.zeros((classes, self._fractions.shape[1]))
        np.add.at(sums, self._labels, self._fractions)
        self._class_mean = sums / np.maximum(counts, 1)[:, None]  # (K, L)
        self._dataset_mean = self._fractions.mean(axis=0)  # (L,)
        # Stable sorts: ties keep image-id order, so the same selection always shows the same image.
        self._orders = {
            ORDERS[0]: np.arange(len(index)),
            ORDERS[1]: np.argsort(-self._losses, kind="stable"),
            ORDERS[2]: np.argsort(-self._frac, kind="stable"),
            ORDERS[3]: np.argsort(self._frac, kind="stable"),
            ORDERS[4]: np.argsort(self._labels == self._preds, kind="stable"),
        }
        self._cfg, self._test = load_config(run_dir / CONFIG), None
        self._quiet = True
        try:
            self.class_picker.options = [ALL_CLASSES, *self.record.class_names]
            self.class_picker.value = ALL_CLASSES
            self.order_picker.value = ORDERS[0]
            self.layer_picker.options = self.record.layer_names
            self.layer_picker.value = self.record.layer_names[0]
        finally:
            self._quiet = False
        self._update_view()

    def _update_view(self) -> None:
        """Apply the class filter to the chosen order and go to its first image."""
        if self._quiet:
            return
        order = self._orders[self.order_picker.value]
        if self.class_picker.value != ALL_CLASSES:
            order = order[self._labels[order] == self.record.class_names.index(self.class_picker.value)]
        self.view_ids = order  # image ids in display order
        self._quiet = True
        try:
            self.position.max = max(len(order) - 1, 0)
            self.position.value = 0
        finally:
            self._quiet = False
        self._render()

    def _step(self, delta: int) -> None:
        self.position.value = int(np.clip(self.position.value + delta, 0, self.position.max))

    def _image(self, image_id: int) -> np.ndarray:
        """One test image, un-normalized to (H, W, 3) in [0, 1]; the split is rebuilt once per run."""
        if self._test is None:
            spec = backbone_spec(self._cfg.model.backbone)
            self._test = build_datasets(self._cfg.data, spec.mean, spec.std).test
            self._mean, self._std = np.array(spec.mean), np.array(spec.std)
        image, _ = self._test[image_id]  # (3, R, R), normalized
        return image.numpy().transpose(1, 2, 0) * self._std + self._mean

    def _render(self) -> None:
        if self._quiet:
            return
        self.renders += 1
        names = self.record.class_names
        if len(self.view_ids) == 0:
            self.shown = {"run": self.run_picker.value, "image_id": None}
            self.caption.value = f"no test image of class <b>{html.escape(str(self.class_picker.value))}</b>"
            self.figure.value = b""
            return
        i = int(self.view_ids[self.position.value])
        label, pred, layer = int(self._labels[i]), int(self._preds[i]), self.layer_picker.value
        profile = records.image_profile(self.record.layer_names, self._fractions[i], self._class_mean[label], self._dataset_mean)
        gates = self.record.gates[layer][i]
        try:
            image, title = self._image(i), f"label {names[label]} · predicted {names[pred]}"
        except KitError as err:  # e.g. a download-backed dataset that is not on this machine
            image, title = np.ones((8, 8, 3)), f"image unavailable: {err}"[:80]
        png = viz.figure_png(image_figures.inspector_figure(image, title, profile, gates, layer))
        self.shown = {
            "run": self.run_picker.value,
            "image_id": i,
            "position": self.position.value,
            "label": names[label],
            "prediction": names[pred],
            "loss": float(self._losses[i]),
            "frac_finetuned": float(self._frac[i]),
            "layer": layer,
            "image": image,
            "profile": profile,
            "gates": gates,
        }
        # Figure, then caption, back to back: the slow part (drawing) is done, so they change together.
        self.figure.value = png
        mark = "✓" if label == pred else "✗"
        self.caption.value = (
            f"<span class='gi-image'>image {i}</span> ({self.position.value + 1} of {len(self.view_ids)}) · "
            f"label <b class='gi-label'>{html.escape(names[label])}</b> · "
            f"prediction <b class='gi-prediction'>{html.escape(names[pred])}</b> {mark} · "
            f"loss {self._losses[i]:.3f} · fine-tuned filters {self._frac[i]:.1%}"
        )

    def select(
        self,
        run: Optional[str] = None,
        class_name: Optional[str] = None,
        order: Optional[str] = None,
        position: Optional[int] = None,
        layer: Optional[str] = None,
    ) -> dict:
        """Set controls as a user would (run, then class and order, then layer, then position).

        Returns:
            :attr:`shown` after the change.

        Raises:
            KitError: a name that is not among the control's options, or a position out of range.
        """
        for value, picker, kind in [
            (run, self.run_picker, "AdaFilter run"),
            (class_name, self.class_picker, "class"),
            (order, self.order_picker, "order"),
            (layer, self.layer_picker, "layer"),
        ]:
            if value is not None:
                if value not in picker.options:
                    raise unknown_name(kind, str(value), [str(o) for o in picker.options])
                picker.value = value
        if position is not None:
            if not 0 <= position < max(len(self.view_ids), 1):
                raise KitError(f"position {position} is out of range; this view holds {len(self.view_ids)} images")
            self.position.value = position
        return self.shown
