"""Atomic file writes and JSON lines: the leaf every module that writes results uses (imports nothing of the kit).

A reader (a table, a notebook, a second process) never sees a half-written file: every write goes to a
temporary file in the same folder and is renamed over the target.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _temporary(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path`` with the permissions a plain ``open`` would give (``mkstemp`` makes
    0600: results then could not be read by the group a study is shared with)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename.

    ``fsync=False`` skips forcing the bytes to disk (checkpoints, rewritten every epoch: a kill keeps the
    page cache, and only a power cut could lose them).
    """
    path = Path(path)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` that never leaves a truncated file behind (a kill mid-save keeps the old one).

    Saved through memory: ``torch.save`` to a path names the archive's inner folder after the (random)
    temporary file, so identical runs wrote different bytes; to a buffer it is always ``archive``, and
    equal weights give equal files (checksums confirm a rerun).
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue(), fsync=False)


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line (metrics are rewritten atomically on resume, see ``truncate_metrics``)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
