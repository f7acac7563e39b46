"""A pruned model stored sparse: really smaller on disk, loaded back into a plain (unmasked) model exactly.

A weight tensor with zeros is stored as a bitmask (one bit per weight, ``numpy.packbits``) and its nonzero values
in order, whenever that takes fewer bytes than the dense tensor (for float32 from about 1/32 zeros on: 4 bytes
per weight dense against 1/8 byte plus 4 per nonzero). Everything else (biases, BN, the head, dense layers) is
stored as it is. At 4x compression a Lite0 backbone's convs take about 3.6x fewer bytes. The file holds tensors,
strings and ints only, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import files, runs
from ..core.errors import KitError

SPARSE_BEST = "best_sparse.pt"
_FORMAT = "adafilter-kit sparse state v1"


def _pack(tensor: torch.Tensor) -> Any:
    """``tensor`` itself, or ``{"shape", "mask", "values"}`` when the bitmask form is smaller.

    Shape:
        tensor: any; mask: uint8 ``(ceil(numel / 8),)``; values: ``(nonzero,)`` of ``tensor``'s dtype.
    """
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return tensor
    flat = tensor.detach().cpu().flatten()
    nonzero = flat != 0
    sparse_bytes = (flat.numel() + 7) // 8 + int(nonzero.sum()) * flat.element_size()
    if sparse_bytes >= flat.numel() * flat.element_size():
        return tensor
    mask = torch.from_numpy(np.packbits(nonzero.numpy()))
    return {"shape": list(tensor.shape), "mask": mask, "values": flat[nonzero].clone()}


def _unpack(entry: Any) -> torch.Tensor:
    if not isinstance(entry, dict):
        return entry
    shape, values = entry["shape"], entry["values"]
    numel = int(np.prod(shape)) if shape else 1
    nonzero = torch.from_numpy(np.unpackbits(entry["mask"].numpy(), count=numel).astype(bool))
    flat = torch.zeros(numel, dtype=values.dtype)
    flat[nonzero] = values
    return flat.view(shape)


def save_sparse(state: dict[str, torch.Tensor], path: Path) -> int:
    """Write ``state`` (a plain state dict, zeros baked in) sparse, atomically; returns the file's size in bytes."""
    payload = {"format": _FORMAT, "tensors": {key: _pack(value) for key, value in state.items()}}
    files.atomic_torch_save(payload, path)
    return Path(path).stat().st_size


def load_sparse(path: Path, device: Any = "cpu") -> dict[str, torch.Tensor]:
    """The plain state dict stored by :func:`save_sparse` (loads into an unmasked model with ``load_state_dict``)."""
    payload = runs.load_checkpoint(path, "cpu", fix="export the model again (retrain the run with --force)")
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise KitError(f"'{path}' is not a sparse model file of this kit; load best.pt instead")
    return {key: _unpack(entry).to(device) for key, entry in payload["tensors"].items()}


def sparse_round_trip(run_dir: Path) -> dict:
    """A finished pruning run's exported model, loaded back from its sparse file into a plain network and measured.

    Returns:
        ``best_bytes`` (dense ``best.pt``), ``sparse_bytes``, ``size_ratio`` (dense / sparse), ``top1_err`` (what the
        run reported) and ``top1_err_from_sparse`` (the test split again, with the weights of the sparse file).
    """
    from ..core.engine import evaluate
    from ..training.finished import load_finished_run
    from ..training.setup import eval_loader

    run_dir = Path(run_dir)
    if not (run_dir / SPARSE_BEST).is_file():
        raise KitError(f"'{run_dir}' has no {SPARSE_BEST}: only unstructured pruning runs write one")
    finished = load_finished_run(run_dir)
    finished.model.load_state_dict(load_sparse(run_dir / SPARSE_BEST, finished.device))
    finished.method.finalize(finished.model)
    cfg = finished.cfg
    test = evaluate(finished.model, eval_loader(finished.splits.test, cfg), finished.device, cfg.amp, cfg.channels_last)
    summary = runs.read_summary(run_dir)
    best, sparse = (run_dir / runs.BEST).stat().st_size, (run_dir / SPARSE_BEST).stat().st_size
    return {
        "best_bytes": best,
        "sparse_bytes": sparse,
        "size_ratio": best / sparse,
        "top1_err": summary["top1_err"],
        "top1_err_from_sparse": test["top1_err"],
    }
