"""Atomic file writes and JSON lines: the leaf every module that writes results uses (imports only ``errors``).

A reader (a table, a notebook, a second process) never sees a half-written file: every write goes to a
temporary file in the same folder and is renamed over the target. JSON is strict: a NaN or infinity is
written as ``null`` (Python's ``json`` would write the bare word ``NaN``, which no other JSON reader takes).
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import KitError


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
    if path.is_dir():  # the rename would fail on the temporary file's name; name the path the caller gave
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
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


def strict_json(obj: Any) -> Any:
    """``obj`` with every float that is not finite replaced by None (nested dicts and lists included)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: strict_json(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(value) for value in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(strict_json(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


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
        handle.write(json.dumps(strict_json(record), sort_keys=True, allow_nan=False) + "\n")
        handle.flush()


def read_jsonl(path: Path, torn_tail_ok: bool = False) -> list[dict]:
    """The records of a JSON-lines file (none if it does not exist).

    Args:
        torn_tail_ok: drop a last line that a kill cut short (no newline, not JSON); what a resume reads.

    Raises:
        KitError: a line is not JSON (one line naming the file and the line).
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if torn_tail_ok and number == len(lines) and not text.endswith("\n"):
                break
            raise KitError(
                f"'{path}' line {number} is not JSON ({err.msg}); the run's records are damaged: retrain it with --force"
            ) from None
    return records


def read_metrics(path: Path, torn_tail_ok: bool = False) -> list[dict]:
    """The per-epoch records of a run's ``metrics.jsonl`` with ``epoch`` counted from 1, as in ``summary.json``
    (records written by kit versions before this rule counted from 0: they are shifted)."""
    records = read_jsonl(path, torn_tail_ok)
    if records and records[0].get("epoch") == 0:
        records = [{**r, "epoch": int(r["epoch"]) + 1} for r in records]
    return records
