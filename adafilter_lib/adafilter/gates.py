"""Gate statistics: reduce the gates a model returns, and per-image gate records.

Both collectors are fed ``(output, labels, losses)`` batch by batch through the ``on_batch`` hook of
:func:`adafilter_lib.core.engine.evaluate`, accumulate on the model's device, and read back once
(``compute`` / ``save``), so they add no per-batch device synchronization.

Words: ``gates[name]`` is (B, C_out) with 1 = fine-tuned filter; ``frac_finetuned`` is the mean gate
(over filters of a layer, and over images unless said otherwise).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.errors import KitError, first_line
from ..core.files import atomic_write_bytes, atomic_write_text

GATES_FILE, INDEX_FILE, USAGE_FILE = "gates.npz", "gate_index.csv", "gate_usage.csv"


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


class GateRecorder:
    """Per-image gates of one split, with label, prediction and loss, saved as ``gates.npz`` + ``gate_index.csv``."""

    def __init__(self):
        self._gates: dict[str, list[torch.Tensor]] = {}
        self._labels, self._preds, self._losses = [], [], []

    def __call__(self, output, labels: torch.Tensor, losses: torch.Tensor) -> None:
        for name, g in output.gates.items():
            self._gates.setdefault(name, []).append(g.detach())
        self._labels.append(labels.detach())
        self._preds.append(output.logits.detach().argmax(dim=1))
        self._losses.append(losses.detach().float())

    def save(self, run_dir: Path, class_names: Sequence[str]) -> None:
        """Write the record atomically (one read-back of everything collected)."""
        gates = {name: torch.cat(chunks).float().cpu().numpy() for name, chunks in self._gates.items()}
        labels, preds, losses = (torch.cat(x).cpu().numpy() for x in (self._labels, self._preds, self._losses))
        save_gate_record(Path(run_dir), gates, labels, preds, losses, class_names)


def save_gate_record(
    run_dir: Path,
    gates: dict[str, np.ndarray],
    labels: np.ndarray,
    preds: np.ndarray,
    losses: np.ndarray,
    class_names: Sequence[str],
) -> None:
    """Write ``gates.npz`` (one packed array per layer) and ``gate_index.csv`` (one row per image).

    Binary gates are bit-packed along the filter axis (a ResNet-50 has ~26k filters per image); other
    gates (soft or averaged) are stored as uint8 in 1/255 steps.
    """
    names = list(gates)
    binary = all(np.isin(g, (0.0, 1.0)).all() for g in gates.values())
    arrays = {
        "layer_names": np.array(names),
        "num_filters": np.array([g.shape[1] for g in gates.values()]),
        "encoding": np.array("packbits" if binary else "uint8_255"),
        "class_names": np.array(list(class_names)),
    }
    for i, g in enumerate(gates.values()):
        arrays[f"layer_{i}"] = np.packbits(g.astype(bool), axis=1) if binary else np.round(g * 255).astype(np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(run_dir / GATES_FILE, buffer.getvalue())
    frac = np.stack([g.mean(axis=1) for g in gates.values()], axis=1) if gates else np.zeros((len(labels), 0))
    index = pd.DataFrame(
        {
            "image_id": np.arange(len(labels)),
            "label": labels,
            "prediction": preds,
            "loss": losses,
            "frac_finetuned": frac.mean(axis=1) if frac.size else np.nan,
        }
    )
    atomic_write_text(run_dir / INDEX_FILE, index.to_csv(index=False))


@dataclass
class GateRecord:
    """A loaded per-image record: ``gates[name]`` (N, C_out) float in [0, 1] and the index table."""

    gates: dict[str, np.ndarray]
    index: pd.DataFrame
    class_names: list[str]

    @property
    def layer_names(self) -> list[str]:
        return list(self.gates)

    def layer_fractions(self) -> np.ndarray:
        """(N, L) fraction of fine-tuned filters per image and layer."""
        return np.stack([g.mean(axis=1) for g in self.gates.values()], axis=1)


def load_gate_record(run_dir: Path) -> GateRecord:
    """Read back what :func:`save_gate_record` wrote.

    Raises:
        KitError: ``gates.npz`` or its index is damaged (truncated, not an archive, a missing array).
    """
    try:
        return _read_gate_record(Path(run_dir))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, pd.errors.ParserError) as err:
        raise KitError(
            f"the gate record in '{run_dir}' cannot be read ({first_line(err)}); the file is damaged: retrain the run with --force"
        ) from None


def _read_gate_record(run_dir: Path) -> GateRecord:
    with np.load(Path(run_dir) / GATES_FILE) as data:
        names, widths, encoding = list(data["layer_names"]), data["num_filters"], str(data["encoding"])
        gates = {}
        for i, (name, width) in enumerate(zip(names, widths)):
            raw = data[f"layer_{i}"]
            gates[str(name)] = (
                np.unpackbits(raw, axis=1, count=int(width)).astype(np.float32)
                if encoding == "packbits"
                else raw.astype(np.float32) / 255.0
            )
        class_names = [str(c) for c in data["class_names"]]
    return GateRecord(gates, pd.read_csv(Path(run_dir) / INDEX_FILE), class_names)
