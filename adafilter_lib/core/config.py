"""Run configuration: one dataclass tree threaded through data, model, method and engine.

A run is fully described by a :class:`RunConfig`. It is built from defaults, then a YAML file,
then ``key=value`` overrides on dotted paths (``optim.lr=0.01``), and saved beside every result
(``config.yaml`` in the run directory) so that any number in a table can be traced to its run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .config_files import read_yaml
from .errors import KitError, unknown_name
from .method_config import OPTIMIZERS, MethodConfig

SELECTION_RULES = ("error", "error_then_loss")  # how the best epoch is chosen (trainer.improves)
SCHEDULES = ("cosine", "step", "constant")


@dataclass
class DataConfig:
    dataset: str = "mnist5k"  # registry name, or "folder:PATH" for a folder of class subfolders
    root: str = "data"  # download / archive root for the paper datasets
    n_per_class: Optional[int] = None  # labelled images per class (train + val); None = all
    val_fraction: float = 0.2  # carved from the labelled training images, stratified
    split_seed: int = 0  # fixes the train/val/test carving independently of the run seed
    resolution: int = 64  # square input side in pixels
    augment: Optional[str] = None  # None = the dataset's default preset ("none", "light", "standard")
    batch_size: int = 32
    eval_batch_size: int = 128
    num_workers: int = 0  # 0 is fastest for the small in-memory offline sets
    holdout_fraction: float = 0.0  # share of each class's training images kept from the weights (split_seed):
    # AdaFilter's gates learn on it with method.adafilter.gates_on_holdout; every other method leaves it unused


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    weights_path: Optional[str] = None  # a local ImageNet weights file (offline use of torchvision backbones)
    head_dropout: float = 0.0


@dataclass
class OptimConfig:
    optimizer: str = "sgd"  # "sgd" or "adamw"
    lr: float = 0.01  # backbone learning rate
    head_lr: float = 0.1  # classifier head learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0  # applied by the optimizer to every group (L2-SP uses its own term)
    schedule: str = "cosine"  # "cosine", "step" or "constant"
    step_size: int = 10  # epochs between decays for "step"
    gamma: float = 0.1  # decay factor for "step"
    epochs: int = 10
    precise_bn: bool = True  # recompute BN statistics on the training data after each epoch
    selection: str = "error"  # best epoch: lowest val error, ties keep the earlier; "error_then_loss": ties by val loss
    chance_loss_factor: float = 3.0  # a run whose chosen epoch's val loss exceeds this x ln(classes) while its val error
    # is no better than chance failed (engine.check_selected; 0: no check: smoke runs measure mechanics, not learning)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    seed: int = 0
    runs_root: str = "runs"
    run_name: Optional[str] = None  # None = "<dataset>__<method>__<backbone>__s<seed>"
    device: str = "auto"  # "auto", "cpu", "cuda"
    amp: bool = True  # bf16 autocast, used only on CUDA
    channels_last: bool = True  # memory format for conv nets (helps on CPU and GPU)
    log_tensorboard: bool = False  # also write per-epoch metrics and gate usage as TensorBoard events (extra)

    def resolved_run_name(self) -> str:
        """The run directory's name (dataset names with a path are reduced to a safe slug)."""
        if self.run_name:
            return self.run_name
        dataset = self.data.dataset.replace("folder:", "folder-").replace("/", "_").strip("_")
        return f"{dataset}__{self.method.name}__{self.model.backbone}__s{self.seed}"

    def run_dir(self) -> Path:
        return Path(self.runs_root) / self.resolved_run_name()


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts (what is written to ``config.yaml``)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, values: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from nested dicts, rejecting unknown keys with the valid ones listed."""
    if not isinstance(values, dict):
        raise KitError(f"config section '{prefix or 'root'}' must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise unknown_name("config key", path, [f"{prefix}{name}" for name in fields])
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = from_dict(type(default), value or {}, prefix=f"{path}.")
        else:
            kwargs[key] = _coerce(path, value, default, fields[key].type)
    return cls(**kwargs)


def _coerce(path: str, value: Any, default: Any, annotation: Any) -> Any:
    optional = "Optional" in str(annotation)
    if value is None:
        if optional:
            return None
        raise KitError(f"config value '{path}' cannot be empty; give a {type(default).__name__}")
    kind = type(default) if default is not None else _optional_inner(annotation)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is float and isinstance(value, str):
        try:  # PyYAML reads "1e-3" (no dot) as a string; accept it as the number it means
            value = float(value)
        except ValueError:
            pass
    if kind is not None and not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise KitError(f"config value '{path}' must be {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):  # no setting of the kit means anything at inf or NaN
        raise KitError(f"config value '{path}' must be a finite number, got {value!r}")
    return value


def _optional_inner(annotation: Any) -> Optional[type]:
    text = str(annotation)
    for name, kind in (("int", int), ("float", float), ("str", str), ("bool", bool)):
        if f"[{name}]" in text:
            return kind
    return None


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` strings (values parsed as YAML) onto nested dicts, in order (a later key wins)."""
    for item in overrides:
        item = str(item)
        if "=" not in item:
            raise KitError(f"override '{item}' is not of the form key=value (e.g. optim.lr=0.01)")
        key, raw = item.split("=", 1)
        node = values
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise KitError(f"override '{item}': '{part}' is a value, not a section")
        node[leaf] = parse_value(raw, item)
    return values


def parse_value(raw: str, item: str):
    """The YAML value of one ``key=value`` override (empty: null); a one-line KitError if it is not YAML."""
    if not raw.strip():
        return None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise KitError(f"override '{item}': the value is not valid YAML ({problem}); quote it or fix it") from None


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> RunConfig:
    """Defaults, then the YAML file at ``path`` (if given), then ``overrides``; validated."""
    values = read_yaml(path, "config file", "pass an existing YAML file (see configs/)") if path is not None else {}
    if not isinstance(values, dict):
        raise KitError(
            f"config file '{path}' must hold a mapping of sections (data:, model:, optim:, ...), "
            f"not a {type(values).__name__}; see adafilter_lib/configs/demo.yaml"
        )
    if path is not None:
        try:  # the file alone first, so that its own mistakes are reported with its name
            validate(from_dict(RunConfig, values))
        except KitError as err:
            raise KitError(f"config file '{path}': {err}") from None
    values = apply_overrides(values, overrides or [])
    cfg = from_dict(RunConfig, values)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Check value ranges and choices; raise a one-line :class:`KitError` for the first problem."""
    checks = [
        (cfg.data.resolution >= 16, "data.resolution must be at least 16 pixels"),
        (0.0 < cfg.data.val_fraction < 1.0, "data.val_fraction must lie strictly between 0 and 1"),
        (0.0 <= cfg.data.holdout_fraction < 1.0, "data.holdout_fraction must lie in [0, 1)"),
        (
            not cfg.method.adafilter.gates_on_holdout or cfg.data.holdout_fraction > 0,
            "method.adafilter.gates_on_holdout needs held-out images: set data.holdout_fraction (e.g. 0.25)",
        ),
        (
            cfg.data.n_per_class is None or cfg.data.n_per_class >= 2,
            "data.n_per_class must be at least 2 (one train and one val image per class) or null",
        ),
        (cfg.data.batch_size >= 1 and cfg.data.eval_batch_size >= 1, "data.batch_size and data.eval_batch_size must be positive"),
        (cfg.data.num_workers >= 0, "data.num_workers must be 0 or more"),
        (
            cfg.optim.optimizer in OPTIMIZERS,
            f"optim.optimizer must be one of {', '.join(OPTIMIZERS)}; got '{cfg.optim.optimizer}'",
        ),
        (cfg.optim.schedule in SCHEDULES, f"optim.schedule must be one of {', '.join(SCHEDULES)}; got '{cfg.optim.schedule}'"),
        (cfg.optim.lr > 0 and cfg.optim.head_lr > 0, "optim.lr and optim.head_lr must be positive"),
        (cfg.optim.epochs >= 1, "optim.epochs must be at least 1"),
        (0.0 <= cfg.optim.momentum < 1.0, "optim.momentum must lie in [0, 1)"),
        (cfg.optim.step_size >= 1 and 0.0 < cfg.optim.gamma <= 1.0, "optim.step_size must be at least 1, gamma in (0, 1]"),
        (
            cfg.optim.selection in SELECTION_RULES,
            f"optim.selection must be one of {', '.join(SELECTION_RULES)}; got '{cfg.optim.selection}'",
        ),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay must be 0 or more"),
        (
            cfg.optim.chance_loss_factor == 0 or cfg.optim.chance_loss_factor >= 1,
            "optim.chance_loss_factor must be 0 (off) or at least 1",
        ),
        (0.0 <= cfg.model.head_dropout < 1.0, "model.head_dropout must lie in [0, 1)"),
        (cfg.device in ("auto", "cpu", "cuda"), f"device must be 'auto', 'cpu' or 'cuda', got '{cfg.device}'"),
        (
            cfg.run_name is None or _plain_name(cfg.run_name),
            f"run_name must be one plain folder name inside the runs folder (no '/', '..', '.' or leading '.'), got '{cfg.run_name}'",
        ),
        (
            cfg.method.name != "lp_ft" or cfg.method.lp_ft.probe_epochs < cfg.optim.epochs,
            f"method.lp_ft.probe_epochs ({cfg.method.lp_ft.probe_epochs}) must be less than optim.epochs "
            f"({cfg.optim.epochs}): the fine-tuning phase needs at least one epoch",
        ),
        *cfg.method.checks(),
    ]
    for ok, message in checks:
        if not ok:
            raise KitError(f"invalid config: {message}")


def _plain_name(name: str) -> bool:
    """One path component that stays inside its parent: not '', '.', '..', hidden, absolute or nested."""
    return bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name and not name.endswith(".partial")


def save_config(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically; see :mod:`adafilter_lib.core.runs`)."""
    from .files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
