"""Gate statistics: reduce the gates a model returns (``GateStats``), and the evaluation collector that AdaFilter
and SpotTune hand the training loop (``GateCollector``; the per-image record is :mod:`.gate_record`).

The collectors are fed ``(output, labels, losses)`` batch by batch through the ``on_batch`` hook of
:func:`adafilter_lib.core.engine.evaluate`, accumulate on the model's device, and read back once
(``compute`` / ``save``), so they add no per-batch device synchronization.

Words: ``gates[name]`` is (B, C_out) with 1 = fine-tuned filter; ``frac_finetuned`` is the mean gate
(over filters of a layer, and over images unless said otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.files import atomic_write_text
from .gate_record import GateRecorder

USAGE_FILE = "gate_usage.csv"  # per layer and class, of the test split


@dataclass
class GateSummary:
    """Gate usage over a split. Arrays are NumPy; L layers, K classes.

    Attributes:
        layer_names: the L gated layers in execution order.
        frac_finetuned: (L,) mean gate per layer.
        frac_std: (L,) standard deviation across images of the per-image layer fraction.
        class_frac: (K, L) mean gate per class and layer (NaN for a class without images).
        class_counts: (K,) images per class.
        filter_frequency: {layer: (C_out,)} how often each filter chose its fine-tuned copy.
    """

    layer_names: list[str]
    frac_finetuned: np.ndarray
    frac_std: np.ndarray
    class_frac: np.ndarray
    class_counts: np.ndarray
    filter_frequency: dict[str, np.ndarray]

    @property
    def overall(self) -> float:
        """Mean gate over every filter of every layer and every image (weights layers by filter count)."""
        total = sum(f.sum() for f in self.filter_frequency.values())
        return float(total / max(sum(f.size for f in self.filter_frequency.values()), 1))

    @property
    def adaptive(self) -> float:
        """Fraction of filters whose choice varies across images (selection frequency strictly in (0, 1)).

        0 means every filter made the same choice for every image: a fixed mix, no per-example selection.
        """
        freqs = np.concatenate([f for f in self.filter_frequency.values()])
        return float(((freqs > 1e-6) & (freqs < 1 - 1e-6)).mean()) if freqs.size else 0.0

    def to_frame(self, class_names: Optional[Sequence[str]] = None) -> pd.DataFrame:
        """Tidy usage table: one row per (layer, group) where group is "all" or a class name."""
        names = list(class_names) if class_names is not None else [str(k) for k in range(len(self.class_counts))]
        rows = []
        for i, layer in enumerate(self.layer_names):
            filters = self.filter_frequency[layer].size
            rows.append(
                {
                    "layer": layer,
                    "layer_index": i,
                    "num_filters": filters,
                    "group": "all",
                    "frac_finetuned": self.frac_finetuned[i],
                    "frac_std": self.frac_std[i],
                    "images": int(self.class_counts.sum()),
                }
            )
            for k, name in enumerate(names):
                rows.append(
                    {
                        "layer": layer,
                        "layer_index": i,
                        "num_filters": filters,
                        "group": name,
                        "frac_finetuned": self.class_frac[k, i],
                        "frac_std": np.nan,
                        "images": int(self.class_counts[k]),
                    }
                )
        return pd.DataFrame(rows)


class GateStats:
    """Accumulates per-layer, per-class and per-filter gate usage over batches (one sync in ``compute``)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.names: list[str] = []
        self._filter_sums: list[torch.Tensor] = []  # (C_out,) per layer
        self._class_sums = self._frac_sums = self._frac_sq_sums = self._class_counts = None

    def update(self, gates: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        """Add one batch: ``gates[name]`` (B, C_out) and ``labels`` (B,)."""
        if not gates:
            return
        values = [g.detach().float() for g in gates.values()]
        per_image = torch.stack([g.mean(dim=1) for g in values], dim=1)  # (B, L)
        onehot = torch.nn.functional.one_hot(labels, self.num_classes).float()  # (B, K)
        if not self.names:
            self.names = list(gates)
            device = per_image.device
            self._filter_sums = [torch.zeros(g.shape[1], device=device) for g in values]
            self._class_sums = torch.zeros(self.num_classes, len(values), device=device)
            self._frac_sums = torch.zeros(len(values), device=device)
            self._frac_sq_sums = torch.zeros(len(values), device=device)
            self._class_counts = torch.zeros(self.num_classes, device=device)
        for total, g in zip(self._filter_sums, values):
            total += g.sum(dim=0)
        self._class_sums += onehot.T @ per_image
        self._frac_sums += per_image.sum(dim=0)
        self._frac_sq_sums += (per_image**2).sum(dim=0)
        self._class_counts += onehot.sum(dim=0)

    def __call__(self, output, labels: torch.Tensor, losses: torch.Tensor) -> None:
        self.update(output.gates, labels)

    def compute(self) -> Optional[GateSummary]:
        """The summary (None if no gates were seen); reads the device once."""
        if not self.names:
            return None
        counts = self._class_counts.cpu().numpy()
        n = max(counts.sum(), 1.0)
        mean = self._frac_sums.cpu().numpy() / n
        var = np.maximum(self._frac_sq_sums.cpu().numpy() / n - mean**2, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            class_frac = self._class_sums.cpu().numpy() / counts[:, None]
        return GateSummary(
            self.names,
            mean,
            np.sqrt(var),
            class_frac,
            counts,
            {name: s.cpu().numpy() / n for name, s in zip(self.names, self._filter_sums)},
        )


class GateCollector:
    """AdaFilter's evaluation records: the share of fine-tuned choices overall, per layer and of filters that vary
    across images (every validation epoch), and on the test split also the per-image gate record (``gates.npz``,
    ``gate_index.csv``) and per-layer, per-class usage (``gate_usage.csv``). One sync per split, in ``fields``."""

    def __init__(self, num_classes: int, record_images: bool):
        self.stats, self.recorder = GateStats(num_classes), GateRecorder() if record_images else None
        self._summary: Optional[GateSummary] = None

    def __call__(self, output, labels: torch.Tensor, losses: torch.Tensor) -> None:
        self.stats(output, labels, losses)
        if self.recorder is not None:
            self.recorder(output, labels, losses)

    def summary(self) -> Optional[GateSummary]:
        if self._summary is None:
            self._summary = self.stats.compute()
        return self._summary

    def fields(self) -> dict:
        summary = self.summary()
        if summary is None:  # a model without gates (never for AdaFilter methods, kept for safety)
            return {}
        fields = {"frac_finetuned": summary.overall, "frac_adaptive_filters": summary.adaptive}
        if self.recorder is None:  # per-epoch records: the per-layer shares too (the test split has gate_usage.csv)
            fields["frac_by_layer"] = dict(zip(summary.layer_names, summary.frac_finetuned.round(4).tolist()))
        return fields

    def save(self, run_dir: Path, class_names: Sequence[str]) -> None:
        summary = self.summary()
        if summary is None or self.recorder is None:
            return
        self.recorder.save(run_dir, class_names)
        atomic_write_text(Path(run_dir) / USAGE_FILE, summary.to_frame(class_names).to_csv(index=False))
