"""The per-image gate record of a split: ``gates.npz`` (every image's gates, bit-packed, one array per layer) and
``gate_index.csv`` (image id, label, prediction, loss, fraction of fine-tuned filters), written by
:class:`GateRecorder` and read back by :func:`load_gate_record` (the gate inspector, drift, the notebooks).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..core.errors import KitError, first_line
from ..core.files import atomic_write_bytes, atomic_write_text

GATES_FILE, INDEX_FILE = "gates.npz", "gate_index.csv"


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
