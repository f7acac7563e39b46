"""Run directories: the staging-then-publish life cycle, the run lock, checkpoints and the settings check.

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

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two identical runs started together are not detected
    fcntl = None

import torch
import yaml

from .config import RunConfig, save_config, to_dict
from .errors import KitError
from .files import atomic_write_json, atomic_write_text, read_jsonl

PARTIAL_SUFFIX = ".partial"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
# Keys that name where a run lives or runs or what it logs, not what it computes: they may differ on reuse.
_PLACE_KEYS = {"runs_root", "device", "log_tensorboard"}
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


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


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Keep only the records of the first ``epochs_done`` epochs (a kill may have left one more)."""
    records = [r for r in read_jsonl(path) if r.get("epoch", 0) < epochs_done]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def staging_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + PARTIAL_SUFFIX)


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / SUMMARY).is_file()


def run_state(run_dir: Path) -> str:
    """``"finished"``, ``"unfinished"`` (a ``<run>.partial/`` to resume) or ``"to do"``: what study plans print."""
    if is_finished(run_dir):
        return "finished"
    return "unfinished" if staging_dir(run_dir).exists() else "to do"


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


class RunFolder:
    """One run's folder through its life, the same for every kind of run (``fit`` and the pruning runs).

    1. :meth:`reuse`: a finished run trained with these settings is returned as it is (another run of the
       same name with other settings is a one-line refusal);
    2. :meth:`check_unfinished`: an unfinished ``<run>.partial/`` needs ``resume`` (and, to be resumed, the same
       settings) or ``force``;
    3. :meth:`start` (holding :meth:`lock`): create the staging folder and write ``config.yaml``;
    4. :meth:`finish`: write ``summary.json``, drop the files only a resume needs, publish atomically; or
       :meth:`discard` after a user-caused failure, so that nothing half-written stays.
    """

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.run_dir = cfg.run_dir()
        self.staging = staging_dir(self.run_dir)

    def reuse(self, force: bool, fix: str = "use another runs folder for the new settings, or --force to retrain this one"):
        """The summary of the finished run with these settings, or None (none finished, or ``force``)."""
        if force or not is_finished(self.run_dir):
            return None
        refuse_other_settings(self.cfg, self.run_dir, fix)
        return read_summary(self.run_dir)

    def finished_meanwhile(self, force: bool):
        """:meth:`reuse` again once :meth:`lock` is held: another process may have finished this run while this
        one set up or waited (its settings are checked the same way)."""
        return self.reuse(force, "use another runs folder for the new settings")

    def check_unfinished(self, resume: bool, force: bool) -> None:
        if self.staging.exists() and not (resume or force):
            raise KitError(f"an unfinished run exists at '{self.staging}'; pass --resume to continue it or --force to start over")
        if resume and not force and (self.staging / CONFIG).is_file():
            refuse_other_settings(self.cfg, self.staging, "resume it with its own settings, or --force to start over")

    def lock(self):
        """:func:`run_lock` on this run (hold it from :meth:`start` to :meth:`finish`)."""
        return run_lock(self.run_dir)

    def start(self, force: bool) -> None:
        """Create the staging folder (``force``: empty) and write the resolved config into it."""
        if force:
            discard(self.staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.staging / CONFIG)

    def finish(self, summary: dict, resume_only: tuple[str, ...] = (CHECKPOINT,)) -> None:
        """Write the summary last, remove the files only a resume reads, and publish the run."""
        atomic_write_json(self.staging / SUMMARY, summary)
        for name in resume_only:
            (self.staging / name).unlink(missing_ok=True)
        publish(self.staging, self.run_dir)

    def discard(self) -> None:
        discard(self.staging)
