"""Run directories: the staging-then-publish life cycle, the run lock, checkpoints and the settings check.

Layout of one run (``<runs_root>/<run_name>/``)::

    config.yaml      the resolved RunConfig
    metrics.jsonl    one JSON object per epoch (train/val loss and error, lr, seconds)
    summary.json     final numbers: top1_err (test, %), val_top1_err, best_epoch, ... ; written last
    checkpoint.pt    latest epoch or phase (model, optimizer, progress, best-so-far); enables --resume
    best.pt          weights of the epoch with the lowest validation error
    failed.json      only in a staging folder: why the run failed (it is never published)

A run is trained in ``<run_name>.partial/`` and renamed to ``<run_name>/`` only when it finished, so
readers (tables, notebooks) never see half-written runs. A run whose numbers cannot be trusted (a loss or
weight that is not finite, a loss far above chance: :class:`~adafilter_lib.core.errors.RunFailed`) keeps
its staging directory with ``failed.json`` for inspection and is never published; ``--resume`` repeats the
failure without training (``--force`` trains it again). A run that is killed leaves its staging directory
behind, and ``--resume`` continues from its last checkpoint (or publishes it, if it had finished).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two identical runs started together are not detected
    fcntl = None

import torch
import yaml

from .config import RunConfig, save_config, to_dict
from .errors import KitError, RunFailed, first_line
from .files import atomic_torch_save, atomic_write_json, atomic_write_text, read_metrics

PARTIAL_SUFFIX = ".partial"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
# Keys that name where a run lives or runs or what it logs, not what it computes: they may differ on reuse.
PLACE_KEYS = {"runs_root", "device", "log_tensorboard"}
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
FAILED = "failed.json"


def load_checkpoint(path: Path, device: Any = "cpu", fix: str = "start the run over with --force") -> Any:
    """A checkpoint or ``best.pt``, loaded with ``weights_only=True`` (tensors and plain values only: a run
    folder from elsewhere cannot execute pickled code); a truncated or foreign file is a one-line KitError
    ending with ``fix``."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # truncated zip, pickled objects refused by weights_only, ...
        raise KitError(f"'{path}' cannot be read ({first_line(err)}); the file is damaged: {fix}") from None


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Keep only the records of the first ``epochs_done`` epochs (a kill may have left one more)."""
    records = [r for r in read_metrics(path, torn_tail_ok=True) if r.get("epoch", 0) <= epochs_done]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def staging_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + PARTIAL_SUFFIX)


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / SUMMARY).is_file()


def run_state(run_dir: Path) -> str:
    """``"finished"``, ``"failed"`` (a ``<run>.partial/`` with ``failed.json``), ``"unfinished"`` (a
    ``<run>.partial/`` to resume) or ``"to do"``: what study plans print."""
    if is_finished(run_dir):
        return "finished"
    if failure(run_dir) is not None:
        return "failed"
    return "unfinished" if staging_dir(run_dir).exists() else "to do"


def failure(run_dir: Path) -> Optional[str]:
    """Why the run at ``run_dir`` failed (its staging folder's ``failed.json``), or None if it did not."""
    path = staging_dir(run_dir) / FAILED
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text())["reason"])
    except (ValueError, KeyError, TypeError):
        return f"unreadable {FAILED}"


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
    """A run's ``summary.json``; a damaged one is a one-line KitError."""
    path = Path(run_dir) / SUMMARY
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise KitError(
            f"'{path}' cannot be read ({first_line(err)}); the run's records are damaged: retrain it with --force"
        ) from None


def config_differences(cfg: RunConfig, run_dir: str | Path) -> list[str]:
    """Dotted keys whose value in ``run_dir/config.yaml`` differs from ``cfg``.

    ``runs_root`` and ``device`` are ignored (where a run lives, not what it computes). A key the
    saved file lacks (an option added to the kit after the run was trained) counts as its default.
    """
    saved = yaml.safe_load((Path(run_dir) / CONFIG).read_text()) or {}
    return [key for key in _diff(to_dict(cfg), with_defaults(saved)) if key.split(".")[0] not in PLACE_KEYS]


def with_defaults(saved: dict) -> dict:
    """A saved ``config.yaml`` (as nested dicts) with today's defaults for the keys it lacks (options added to
    the kit after the run was trained), so that old and new runs of the same settings compare equal."""
    return _merged(to_dict(RunConfig()), saved or {})


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
    4. while training, :meth:`save_checkpoint` after every epoch or phase (what ``--resume`` reads back with
       :meth:`resume_state`) and :meth:`save_best` for the weights a run reports;
    5. :meth:`finish`: write ``summary.json``, drop the files only a resume needs, publish atomically; or
       :meth:`discard` after a user-caused failure, so that nothing half-written stays.
    """

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.run_dir = cfg.run_dir()
        self.staging = staging_dir(self.run_dir)

    def reuse(self, force: bool, fix: str = "use another runs folder for the new settings, or --force to retrain this one"):
        """The summary of the finished run with these settings, or None (none finished, or ``force``).

        Raises:
            KitError: a folder of this name that is not a run, or a run with other settings.
        """
        if self.run_dir.is_symlink() or (self.run_dir.exists() and not is_finished(self.run_dir)):
            raise KitError(f"'{self.run_dir}' exists and is not a finished run; move it away or give this run another run_name")
        if force or not is_finished(self.run_dir):
            return None
        refuse_other_settings(self.cfg, self.run_dir, fix)
        return read_summary(self.run_dir)

    def finished_meanwhile(self, force: bool):
        """:meth:`reuse` again once :meth:`lock` is held: another process may have finished this run while this
        one set up or waited (its settings are checked the same way)."""
        return self.reuse(force, "use another runs folder for the new settings")

    def check_unfinished(self, resume: bool, force: bool) -> Optional[dict]:
        """Refuse an unfinished run without ``resume``/``force``; with ``resume``, the summary of a staging folder
        that had finished (a publish that was refused or killed): it is published as it is.

        Raises:
            RunFailed: the staging folder holds a failed run (resuming would repeat the failure).
            KitError: an unfinished run without ``resume`` or ``force``, or one with other settings.
        """
        if force or not self.staging.exists():
            return None
        reason = failure(self.run_dir)
        if reason is not None:
            raise RunFailed(f"run '{self.run_dir}' failed before ({reason}); see '{self.staging}', or --force to train it again")
        if not resume:
            raise KitError(f"an unfinished run exists at '{self.staging}'; pass --resume to continue it or --force to start over")
        if (self.staging / CONFIG).is_file():
            refuse_other_settings(self.cfg, self.staging, "resume it with its own settings, or --force to start over")
        if is_finished(self.staging):
            with self.lock():  # a process that is publishing it right now holds the lock: one line, no race
                summary = read_summary(self.staging)
                publish(self.staging, self.run_dir)
            return summary
        return None

    def lock(self):
        """:func:`run_lock` on this run (hold it from :meth:`start` to :meth:`finish`)."""
        return run_lock(self.run_dir)

    def start(self, force: bool) -> None:
        """Create the staging folder (``force``: empty) and write the resolved config into it."""
        if force:
            discard(self.staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.staging / CONFIG)

    def save_checkpoint(self, state: dict) -> None:
        """Write the resume state (model, optimizer, progress: whatever the runner needs to continue) atomically:
        a kill while writing leaves the previous checkpoint."""
        atomic_torch_save(state, self.staging / CHECKPOINT)

    def resume_state(self, device: Any = "cpu") -> Optional[dict]:
        """The last :meth:`save_checkpoint` state of the staging folder, or None (nothing to resume)."""
        path = self.staging / CHECKPOINT
        return load_checkpoint(path, device) if path.exists() else None

    def save_best(self, state_dict: dict) -> None:
        """Write the weights the run reports (``best.pt``), atomically."""
        atomic_torch_save(state_dict, self.staging / BEST)

    def load_best(self, device: Any = "cpu") -> dict:
        """The weights last written by :meth:`save_best`."""
        return load_checkpoint(self.staging / BEST, device)

    def finish(self, summary: dict) -> None:
        """Write the summary last, remove the checkpoint (only a resume reads it), and publish the run."""
        atomic_write_json(self.staging / SUMMARY, summary)
        (self.staging / CHECKPOINT).unlink(missing_ok=True)
        publish(self.staging, self.run_dir)

    def discard(self) -> None:
        discard(self.staging)

    def abandon(self, err: KitError) -> KitError:
        """The error to raise after ``err`` stopped the run: a :class:`RunFailed` keeps the staging folder with
        ``failed.json`` for inspection (and names the run); any other user-caused error discards it, so that
        nothing half-written stays."""
        if not isinstance(err, RunFailed):
            self.discard()
            return err
        atomic_write_json(self.staging / FAILED, {"reason": str(err)})
        return RunFailed(f"run '{self.run_dir}' failed: {err} (kept for inspection in '{self.staging}')")
