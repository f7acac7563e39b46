"""Run configuration: one dataclass tree threaded through data, model, method and engine.

A run is fully described by a :class:`RunConfig`. It is built from defaults, then a YAML file,
then ``key=value`` overrides on dotted paths (``optim.lr=0.01``), and saved beside every result
(``config.yaml`` in the run directory) so that any number in a table can be traced to its run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import KitError


@dataclass
class DataConfig:
    dataset: str = "mnist5k"          # registry name, or "folder:PATH" for a folder of class subfolders
    root: str = "data"                # download / archive root for the paper datasets
    n_per_class: Optional[int] = None # labelled images per class (train + val); None = all
    val_fraction: float = 0.2         # carved from the labelled training images, stratified
    split_seed: int = 0               # fixes the train/val/test carving independently of the run seed
    resolution: int = 64              # square input side in pixels
    augment: Optional[str] = None     # None = the dataset's default preset ("none", "light", "standard")
    batch_size: int = 32
    eval_batch_size: int = 128
    num_workers: int = 0              # 0 is fastest for the small in-memory offline sets


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    weights_path: Optional[str] = None  # a local ImageNet weights file (offline use of torchvision backbones)
    head_dropout: float = 0.0


@dataclass
class OptimConfig:
    optimizer: str = "sgd"            # "sgd" or "adamw"
    lr: float = 0.01                  # backbone learning rate
    head_lr: float = 0.1              # classifier head learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0         # applied by the optimizer to every group (L2-SP uses its own term)
    schedule: str = "cosine"          # "cosine", "step" or "constant"
    step_size: int = 10               # epochs between decays for "step"
    gamma: float = 0.1                # decay factor for "step"
    epochs: int = 10
    precise_bn: bool = True           # recompute BN statistics on the training data after each epoch


@dataclass
class L2SPConfig:
    alpha: float = 0.1                # pull of backbone weights towards their pretrained values
    beta: float = 0.01                # plain L2 on the new head


@dataclass
class AdaFilterConfig:
    gates: str = "learned"            # "learned", "random" (Bernoulli 0.5), "ones" (all fine-tuned), "zeros" (all pretrained)
    gated_layers: str = "stages"      # "stages" (convs inside the backbone's blocks) or "all" (stem and head conv too)
    gated_bn: bool = True             # separate BN per path; False = one BN after mixing (ablation)
    bn_pretrained: str = "stats"      # "stats" (affine frozen, running stats adapt), "frozen", "trainable"
    binarize: str = "straight_through"  # or "soft" (continuous gates, ablation)
    noise: str = "none"               # "none" or "logistic" (binary Gumbel noise on training logits)
    temperature: float = 1.0
    hidden: int = 64                  # LSTM width d (64: the gate network costs ~10% of a Lite0 step on CPU at 128)
    gate_bias_init: float = 0.0       # initial gate logit (> 0 leans to fine-tuned filters)
    gate_lr: float = 0.1              # learning rate of the gate network (its gradients are small: paths start equal)
    gate_optimizer: Optional[str] = None  # the gate network's update rule: None = optim.optimizer, or "sgd" / "adamw"
    usage_penalty: float = 0.0        # lam in lam * (mean(g) - usage_target)^2; 0 = off
    usage_target: float = 0.5
    gate_warmup_epochs: int = 0       # first epochs with every gate 1 (fine-tuning with gated BN): the banks drift apart
                                      # before gates learn (equal banks give the gates zero gradient)


@dataclass
class FinePruningConfig:
    granularity: str = "stage"        # one pruning fraction per "stage" (few BO dimensions) or per "layer"
    sampler: str = "gp"               # Optuna sampler: "gp" (Gaussian process) or "tpe"
    startup_trials: int = 4           # random trials per round before the sampler models the objective
    rounds: int = 3                   # BO rounds; each proposes fractions, the best is fine-tuned with masks
    trials: int = 8                   # trials per round
    warmup_epochs: int = 2            # dense fine-tuning before the first round (the head must learn first)
    trial_epochs: int = 1             # brief fine-tuning of each trial before it is scored on validation
    round_epochs: int = 2             # fine-tuning of the round's best proposal, with masks
    final_epochs: int = 4             # masked fine-tuning after the last round (best epoch picked on validation)
    lam: float = 0.1                  # objective = val_accuracy + lam * compression_term
    compression_term: str = "log10"  # "log10" (log10 of the compression) or "sparsity" (zero fraction)
    max_sparsity: float = 0.98        # upper bound of every searched fraction
    gradual: bool = True              # round r of R searches up to r/R of max_sparsity's log10 compression
    min_layer_weights: int = 10000    # smaller layers (stems, small projections) are never pruned
    splice: bool = False              # recompute masks from the dense weights during fine-tuning (pruned weights can return)
    splice_every: int = 10            # optimizer steps between mask recomputations when splicing
    target_sparsity: Optional[float] = None  # prune_after_finetune: None = the sparsity of the matching fine_pruning run


@dataclass
class SpotTuneConfig:
    temperature: float = 5.0          # Gumbel-softmax temperature (official code: 5)
    policy_lr: float = 0.01           # learning rate of the policy network
    policy_width: int = 16            # channels of the policy network's first stage (doubled per stage)
    eval_policy: str = "argmax"       # "argmax" (deterministic) or "sample" (hard Gumbel sample, as the official code)


@dataclass
class DeltaConfig:
    alpha: float = 0.01               # weight of the attention-weighted feature-map distance
    beta: float = 0.01                # plain L2 on the new head
    attention: str = "loss"           # "loss" (channel weights from the loss increase when a channel is dropped) or "uniform"
    attention_images: int = 64        # training images used to estimate the channel attention


@dataclass
class BSSConfig:
    k: int = 1                        # number of smallest singular values penalized
    eta: float = 0.001                # weight of the penalty


@dataclass
class WiseFTConfig:
    alpha: float = 0.5                # a in (1 - a) * w_pretrained + a * w_finetuned


@dataclass
class MethodConfig:
    name: str = "finetune"
    l2sp: L2SPConfig = field(default_factory=L2SPConfig)
    adafilter: AdaFilterConfig = field(default_factory=AdaFilterConfig)
    fine_pruning: FinePruningConfig = field(default_factory=FinePruningConfig)
    spottune: SpotTuneConfig = field(default_factory=SpotTuneConfig)
    delta: DeltaConfig = field(default_factory=DeltaConfig)
    bss: BSSConfig = field(default_factory=BSSConfig)
    wise_ft: WiseFTConfig = field(default_factory=WiseFTConfig)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    seed: int = 0
    runs_root: str = "runs"
    run_name: Optional[str] = None    # None = "<dataset>__<method>__<backbone>__s<seed>"
    device: str = "auto"              # "auto", "cpu", "cuda"
    amp: bool = True                  # bf16 autocast, used only on CUDA
    channels_last: bool = True        # memory format for conv nets (helps on CPU and GPU)

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
            raise KitError(f"unknown config key '{path}'; valid keys here: {', '.join(fields)}")
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
        return float(value)
    if kind is float and isinstance(value, str):
        try:  # PyYAML reads "1e-3" (no dot) as a string; accept it as the number it means
            return float(value)
        except ValueError:
            pass
    if kind is not None and not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise KitError(f"config value '{path}' must be {kind.__name__}, got {value!r}")
    return value


def _optional_inner(annotation: Any) -> Optional[type]:
    text = str(annotation)
    for name, kind in (("int", int), ("float", float), ("str", str), ("bool", bool)):
        if f"[{name}]" in text:
            return kind
    return None


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` strings (values parsed as YAML scalars) onto nested dicts, in order."""
    for item in overrides:
        if "=" not in item:
            raise KitError(f"override '{item}' is not of the form key=value (e.g. optim.lr=0.01)")
        key, raw = item.split("=", 1)
        node = values
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise KitError(f"override '{item}': '{part}' is a value, not a section")
        node[leaf] = yaml.safe_load(raw) if raw.strip() else None
    return values


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> RunConfig:
    """Defaults, then the YAML file at ``path`` (if given), then ``overrides``; validated."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise KitError(f"config file '{path}' not found; pass an existing YAML file (see configs/)")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise KitError(f"config file '{path}' is not valid YAML ({str(err).splitlines()[0]})") from None
    values = apply_overrides(values, overrides or [])
    cfg = from_dict(RunConfig, values)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Check value ranges and choices; raise a one-line :class:`KitError` for the first problem."""
    checks = [
        (cfg.data.resolution >= 16, "data.resolution must be at least 16 pixels"),
        (0.0 < cfg.data.val_fraction < 1.0, "data.val_fraction must lie strictly between 0 and 1"),
        (cfg.data.n_per_class is None or cfg.data.n_per_class >= 2, "data.n_per_class must be at least 2 (one train and one val image per class) or null"),
        (cfg.data.batch_size >= 1 and cfg.data.eval_batch_size >= 1, "data.batch_size and data.eval_batch_size must be positive"),
        (cfg.data.num_workers >= 0, "data.num_workers must be 0 or more"),
        (cfg.optim.optimizer in ("sgd", "adamw"), f"optim.optimizer must be 'sgd' or 'adamw', got '{cfg.optim.optimizer}'"),
        (cfg.optim.schedule in ("cosine", "step", "constant"), f"optim.schedule must be 'cosine', 'step' or 'constant', got '{cfg.optim.schedule}'"),
        (cfg.optim.lr > 0 and cfg.optim.head_lr > 0, "optim.lr and optim.head_lr must be positive"),
        (cfg.optim.epochs >= 1, "optim.epochs must be at least 1"),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay must be 0 or more"),
        (0.0 <= cfg.model.head_dropout < 1.0, "model.head_dropout must lie in [0, 1)"),
        (cfg.device in ("auto", "cpu", "cuda"), f"device must be 'auto', 'cpu' or 'cuda', got '{cfg.device}'"),
        (cfg.method.l2sp.alpha >= 0 and cfg.method.l2sp.beta >= 0, "method.l2sp.alpha and beta must be 0 or more"),
        *_adafilter_checks(cfg.method.adafilter),
        *_baseline_checks(cfg.method),
    ]
    for ok, message in checks:
        if not ok:
            raise KitError(f"invalid config: {message}")


def _adafilter_checks(a: AdaFilterConfig) -> list[tuple[bool, str]]:
    def choice(value, name, options):
        return value in options, f"method.adafilter.{name} must be one of {', '.join(options)}; got '{value}'"

    return [
        choice(a.gates, "gates", ("learned", "random", "ones", "zeros")),
        choice(a.gated_layers, "gated_layers", ("stages", "all")),
        choice(a.bn_pretrained, "bn_pretrained", ("stats", "frozen", "trainable")),
        choice(a.binarize, "binarize", ("straight_through", "soft")),
        choice(a.noise, "noise", ("none", "logistic")),
        (a.temperature > 0, "method.adafilter.temperature must be positive"),
        (a.hidden >= 1, "method.adafilter.hidden must be at least 1"),
        (a.gate_lr > 0, "method.adafilter.gate_lr must be positive"),
        (a.gate_optimizer in (None, "sgd", "adamw"),
         f"method.adafilter.gate_optimizer must be sgd or adamw (or unset: optim.optimizer); got '{a.gate_optimizer}'"),
        (a.gate_warmup_epochs >= 0, "method.adafilter.gate_warmup_epochs must be 0 or more"),
        (a.usage_penalty >= 0 and 0 <= a.usage_target <= 1, "method.adafilter.usage_penalty must be >= 0 and usage_target in [0, 1]"),
    ]



def _baseline_checks(m: MethodConfig) -> list[tuple[bool, str]]:
    """Value checks of the Fine-Pruning, SpotTune, DELTA, BSS and WiSE-FT options."""
    fp, st = m.fine_pruning, m.spottune
    return [
        (fp.granularity in ("stage", "layer"), f"method.fine_pruning.granularity must be 'stage' or 'layer'; got '{fp.granularity}'"),
        (fp.sampler in ("gp", "tpe"), f"method.fine_pruning.sampler must be 'gp' or 'tpe'; got '{fp.sampler}'"),
        (fp.compression_term in ("log10", "sparsity"), f"method.fine_pruning.compression_term must be 'log10' or 'sparsity'; got '{fp.compression_term}'"),
        (fp.rounds >= 1 and fp.trials >= 1 and fp.startup_trials >= 0, "method.fine_pruning.rounds and trials must be at least 1, startup_trials 0 or more"),
        (min(fp.warmup_epochs, fp.trial_epochs, fp.round_epochs) >= 0 and fp.final_epochs >= 1, "method.fine_pruning epochs must be 0 or more (final_epochs at least 1)"),
        (0.0 < fp.max_sparsity < 1.0, "method.fine_pruning.max_sparsity must lie strictly between 0 and 1"),
        (fp.lam >= 0 and fp.splice_every >= 1 and fp.min_layer_weights >= 0, "method.fine_pruning.lam and min_layer_weights must be 0 or more, splice_every at least 1"),
        (fp.target_sparsity is None or 0.0 <= fp.target_sparsity < 1.0, "method.fine_pruning.target_sparsity must lie in [0, 1) or be null"),
        (st.temperature > 0 and st.policy_lr > 0 and st.policy_width >= 1, "method.spottune.temperature, policy_lr and policy_width must be positive"),
        (st.eval_policy in ("argmax", "sample"), f"method.spottune.eval_policy must be 'argmax' or 'sample'; got '{st.eval_policy}'"),
        (m.delta.alpha >= 0 and m.delta.beta >= 0 and m.delta.attention_images >= 1, "method.delta.alpha and beta must be 0 or more, attention_images at least 1"),
        (m.delta.attention in ("loss", "uniform"), f"method.delta.attention must be 'loss' or 'uniform'; got '{m.delta.attention}'"),
        (m.bss.k >= 1 and m.bss.eta >= 0, "method.bss.k must be at least 1 and eta 0 or more"),
        (0.0 <= m.wise_ft.alpha <= 1.0, "method.wise_ft.alpha must lie in [0, 1]"),
    ]


def save_config(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically; see :mod:`adafilter_lib.runs`)."""
    from .runs import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
