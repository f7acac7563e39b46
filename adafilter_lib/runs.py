"""Run directories: atomic files, the staging-then-publish life cycle, and checkpoints.

Layout of one run (``<runs_root>/<run_name>/``)::

    config.yaml      the resolved RunConfig
    metrics.jsonl    one JSON object per epoch (train/val loss and error, lr, seconds)
    summary.json     final numbers: top1_err (test, %), val_top1_err, best_epoch, ... ; written last
    checkpoint.pt    latest epoch (model, optimizer, scheduler, best-so-far); enables --resume
    best.pt          weights of the epoch with the lowest validation error

A run is trained in ``<run_name>.partial/`` and renamed to ``<run_name>/`` only when it finished, so
readers (tables, notebooks) never see half-written runs. A run that fails for a user-caused reason
(NaN loss, bad data) removes its staging directory; a run that is killed leaves it behind, and
``--resume`` continues from its last checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two identical runs started together are not detected
    fcntl = None

import torch
import yaml

from .config import RunConfig, to_dict
from .errors import KitError

PARTIAL_SUFFIX = ".partial"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
# Keys that name where a run lives or runs or what it logs, not what it computes: they may differ on reuse.
_PLACE_KEYS = {"runs_root", "device", "log_tensorboard"}
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


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


def load_checkpoint(path: Path, device: Any = "cpu") -> Any:
    """A checkpoint to resume from, loaded with ``weights_only=True`` (tensors and plain values only: a run
    folder from elsewhere cannot execute pickled code); a truncated or foreign file is a one-line KitError."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # truncated zip, pickled objects refused by weights_only, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise KitError(
            f"checkpoint '{path}' cannot be read ({type(err).__name__}: {first[:160]}); start the run over with --force"
        ) from None


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


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Keep only the records of the first ``epochs_done`` epochs (a kill may have left one more)."""
    records = [r for r in read_jsonl(path) if r.get("epoch", 0) < epochs_done]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def staging_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + PARTIAL_SUFFIX)


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / SUMMARY).is_file()


def publish(staging: Path, run_dir: Path) -> None:
    """Move a finished staging directory to its final name, replacing an older finished run.

    Raises:
        KitError: something that is not a finished run (no ``summary.json``) sits at ``run_dir``: it is
            never removed; the staging directory stays for ``--resume`` once the folder is moved away.
    """
    run_dir = Path(run_dir)
    if run_dir.is_symlink() or (run_dir.exists() and not is_finished(run_dir)):
        raise KitError(
            f"'{run_dir}' exists and is not a finished run; move it away, then run again with --resume to publish '{staging}'"
        )
    if run_dir.exists():
        shutil.rmtree(run_dir)
    os.replace(staging, run_dir)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` while it trains (a ``.<name>.lock`` file beside it).

    A second process that trains the same run at the same time stops with one line instead of both
    writing into one staging folder. The lock is an advisory ``flock`` held by the open file, so a killed
    run releases it and ``--resume`` works; the lock file is removed when the run ends.

    Raises:
        KitError: another process holds the lock.
    """
    if fcntl is None:
        yield
        return
    path = Path(run_dir).with_name(f".{Path(run_dir).name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KitError(
                f"run '{run_dir}' is being trained by another process right now; wait for it (a finished "
                f"run is then reused) or give this one another run_name or --runs folder"
            ) from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
    finally:
        handle.close()


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / SUMMARY).read_text())


def config_differences(cfg: RunConfig, run_dir: str | Path) -> list[str]:
    """Dotted keys whose value in ``run_dir/config.yaml`` differs from ``cfg``.

    ``runs_root`` and ``device`` are ignored (where a run lives, not what it computes). A key the
    saved file lacks (an option added to the kit after the run was trained) counts as its default.
    """
    saved = yaml.safe_load((Path(run_dir) / CONFIG).read_text()) or {}
    return [key for key in _diff(to_dict(cfg), _merged(to_dict(RunConfig()), saved)) if key.split(".")[0] not in _PLACE_KEYS]


def _merged(defaults: dict, saved: dict) -> dict:
    out = dict(defaults)
    for key, value in saved.items():
        out[key] = _merged(defaults[key], value) if isinstance(defaults.get(key), dict) and isinstance(value, dict) else value
    return out


def _diff(wanted: dict, saved: dict, prefix: str = "") -> list[str]:
    """Keys of ``wanted`` (recursively) whose value in ``saved`` differs; keys only in ``saved`` are ignored."""
    keys = []
    for key, a in wanted.items():
        b = saved.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def refuse_other_settings(cfg: RunConfig, run_dir: Path, fix: str) -> None:
    """Raise a one-line KitError naming the differing keys when ``run_dir`` was trained with other settings."""
    differences = config_differences(cfg, run_dir)
    if differences:
        shown = ", ".join(differences[:4]) + (" ..." if len(differences) > 4 else "")
        raise KitError(f"run '{run_dir}' exists with other settings ({shown}); {fix}")
