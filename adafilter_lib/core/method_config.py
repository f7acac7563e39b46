"""The per-method option dataclasses of a run: ``RunConfig.method`` (:class:`MethodConfig`).

One dataclass per method family (its options live under ``method.<family>.*`` in YAML and ``--set``);
:mod:`adafilter_lib.core.config` assembles them into the run configuration; each option's value check
lives here, beside its dataclass (``MethodConfig.checks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# The choices of every option that takes a name, defined once: the checks below and the modules that act on them
# (adafilter.layers, adafilter.gate_net) read them from here.
ADAFILTER_CHOICES = {
    "gates": ("learned", "random", "ones", "zeros"),
    "gated_layers": ("stages", "all"),
    "bn_pretrained": ("stats", "frozen", "trainable"),
    "binarize": ("straight_through", "soft"),
    "noise": ("none", "logistic"),
    "eval_gates": ("threshold", "sample", "mean"),
    "gate_input": ("layer_input", "previous_output"),
    "usage_scope": ("all", "layer"),
}
OPTIMIZERS = ("sgd", "adamw")
FINE_PRUNING_CHOICES = {
    "granularity": ("stage", "layer"),
    "sampler": ("gp", "tpe"),
    "compression_term": ("log10", "sparsity"),
    "allocation": ("search", "global"),
}
SPOTTUNE_CHOICES = {"eval_policy": ("argmax", "sample")}
DELTA_CHOICES = {"attention": ("loss", "uniform")}


@dataclass
class L2SPConfig:
    alpha: float = 0.1  # pull of backbone weights towards their pretrained values
    beta: float = 0.01  # plain L2 on the new head


@dataclass
class AdaFilterConfig:
    gates: str = "learned"  # "learned", "random" (Bernoulli 0.5), "ones" (all fine-tuned), "zeros" (all pretrained)
    gated_layers: str = "stages"  # "stages" (convs inside the backbone's blocks) or "all" (stem and head conv too)
    gated_bn: bool = True  # separate BN per path; False = one BN after mixing (ablation)
    bn_pretrained: str = "stats"  # "stats" (affine frozen, running stats adapt), "frozen", "trainable"
    binarize: str = "straight_through"  # or "soft" (continuous gates, ablation)
    noise: str = "none"  # "none" or "logistic" (binary Gumbel noise on training logits)
    temperature: float = 1.0
    hidden: int = 64  # LSTM width d (64: the gate network costs ~10% of a Lite0 step on CPU at 128)
    gate_bias_init: float = 0.0  # initial gate logit (> 0 leans to fine-tuned filters)
    gate_lr: float = 0.1  # learning rate of the gate network (its gradients are small: paths start equal)
    gate_optimizer: Optional[str] = None  # the gate network's update rule: None = optim.optimizer, or "sgd" / "adamw"
    gate_weight_decay: Optional[float] = None  # weight decay of the gate network: None = optim.weight_decay (SpotTune: 1e-3)
    eval_gates: str = "threshold"  # evaluation: "threshold" (logit > 0), "sample" (one Bernoulli draw per gate,
    # seeded by the run seed), "mean" (class probabilities averaged over eval_samples draws)
    eval_samples: int = 8  # K for eval_gates="mean"
    gate_input: str = "layer_input"  # what each gate reads: "layer_input" (its layer's pooled input) or "previous_output"
    # (Fig. 1 of the paper: the image for the first gate, then the previous gated layer's output)
    usage_penalty: float = 0.0  # lam in lam * (mean(g) - usage_target)^2; 0 = off
    usage_target: float = 0.5
    usage_scope: str = "all"  # "all": one mean over every gate; "layer": the mean over layers of each layer's
    # (mean(g_l) - target)^2, ConvNet-AIG's target-rate loss (t = 0.7, lam = 1 there)
    gate_warmup_epochs: int = 0  # first epochs with every gate 1 (fine-tuning with gated BN): the banks drift apart
    # before gates learn (equal banks give the gates zero gradient)
    gate_input_grad: bool = True  # False: the gate network reads detached activations, so the classification
    # loss reaches the filters only through the conv paths, not through the gates
    gated_stage: Optional[str] = None  # one backbone stage (core.stages names, as method.surgical.stage): gate only its
    # convs and freeze the rest of the backbone as surgical fine-tuning does ("which layers" apart from "which images")
    gates_on_holdout: bool = False  # the gate network steps on data.holdout_fraction of the training images, the weights
    # on the rest (first-order bilevel, as DARTS): gates learn from images their filters were not fitted on


@dataclass
class FinePruningConfig:
    granularity: str = "stage"  # one pruning fraction per "stage" (few BO dimensions) or per "layer"
    sampler: str = "gp"  # Optuna sampler: "gp" (Gaussian process) or "tpe"
    startup_trials: int = 4  # random trials per round before the sampler models the objective
    rounds: int = 3  # BO rounds; each proposes fractions, the best is fine-tuned with masks
    trials: int = 8  # trials per round
    warmup_epochs: int = 2  # dense fine-tuning before the first round (the head must learn first)
    trial_epochs: int = 1  # brief fine-tuning of each trial before it is scored on validation
    round_epochs: int = 2  # fine-tuning of the round's best proposal, with masks
    final_epochs: int = 4  # masked fine-tuning after the last round (best epoch picked on validation)
    lam: float = 0.1  # objective = val_accuracy + lam * compression_term
    compression_term: str = "log10"  # "log10" (log10 of the compression) or "sparsity" (zero fraction)
    max_sparsity: float = 0.98  # upper bound of every searched fraction
    gradual: bool = True  # round r of R searches up to r/R of max_sparsity's log10 compression
    min_layer_weights: int = 10000  # smaller layers (stems, small projections) are never pruned
    splice: bool = False  # recompute masks from the dense weights during fine-tuning (pruned weights can return)
    splice_every: int = 10  # optimizer steps between mask recomputations when splicing
    target_sparsity: Optional[float] = None  # prune_after_finetune, gradual_magnitude: None = the matching fine_pruning run's
    # The compression (prunable weights / nonzero) every pruning method reaches, for fronts at 2x, 4x, ...: Fine-Pruning
    # searches the allocation among stages at this fixed budget (the objective is validation accuracy alone, lam unused);
    # prune_after_finetune and gradual_magnitude prune to it. None: Fine-Pruning trades with lam, the others match it.
    target_compression: Optional[float] = None
    prune_every: int = 10  # gradual_magnitude: optimizer steps between mask updates on the cubic schedule
    target_macs_ratio: float = 2.0  # channel_pruning: dense MACs / pruned MACs per image (Torch-Pruning, per layer)
    # Fine-Pruning's per-round fractions: "search" (Bayesian optimization) or "global" (no trials: what one global
    # magnitude threshold gives at the round's budget; needs target_compression): the allocation of pruning after
    # fine-tuning inside Fine-Pruning's joint schedule, which tells the allocation's share of the gap apart
    allocation: str = "search"


@dataclass
class SpotTuneConfig:
    temperature: float = 5.0  # Gumbel-softmax temperature (official code: 5)
    policy_lr: float = 0.01  # learning rate of the policy network
    policy_width: int = 16  # channels of the policy network's first stage (doubled per stage)
    eval_policy: str = "argmax"  # "argmax" (deterministic) or "sample" (hard Gumbel sample, as the official code)


@dataclass
class DeltaConfig:
    alpha: float = 0.01  # weight of the attention-weighted feature-map distance
    beta: float = 0.01  # plain L2 on the new head
    attention: str = "loss"  # "loss" (channel weights from the loss increase when a channel is dropped) or "uniform"
    attention_images: int = 64  # training images used to estimate the channel attention


@dataclass
class BSSConfig:
    k: int = 1  # number of smallest singular values penalized
    eta: float = 0.001  # weight of the penalty


@dataclass
class WiseFTConfig:
    alpha: float = 0.5  # a in (1 - a) * w_pretrained + a * w_finetuned


@dataclass
class LPFTConfig:
    probe_epochs: int = 2  # epochs of the linear probe (backbone frozen) before fine-tuning everything
    probe_lr: float = 0.05  # the head's rate during the probe (fine-tuning then uses optim.lr and optim.head_lr)


@dataclass
class SurgicalConfig:
    stage: str = "stem"  # the one backbone stage that trains (core.stages: stem, blocks.N / layerN, head_conv)
    frozen_bn_stats: bool = True  # BNs outside that stage keep their pretrained statistics (eval mode)


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
    lp_ft: LPFTConfig = field(default_factory=LPFTConfig)
    surgical: SurgicalConfig = field(default_factory=SurgicalConfig)

    def checks(self) -> list[tuple[bool, str]]:
        """Every method option's value check, ``(ok, message)``; :func:`~adafilter_lib.core.config.validate`
        raises for the first that fails."""
        l2sp = (self.l2sp.alpha >= 0 and self.l2sp.beta >= 0, "method.l2sp.alpha and beta must be 0 or more")
        channel = (
            self.name != "channel_pruning" or self.fine_pruning.target_compression is None,
            "channel_pruning removes channels to method.fine_pruning.target_macs_ratio; unset target_compression",
        )
        return [l2sp, channel, *adafilter_checks(self.adafilter), *baseline_checks(self)]


def _choices(section: str, options, choices: dict[str, tuple]) -> list[tuple[bool, str]]:
    """``(ok, message)`` for every named option of ``options`` against its ``choices``."""
    return [
        (
            getattr(options, name) in valid,
            f"method.{section}.{name} must be one of {', '.join(valid)}; got '{getattr(options, name)}'",
        )
        for name, valid in choices.items()
    ]


def adafilter_checks(a: AdaFilterConfig) -> list[tuple[bool, str]]:
    """Value checks of the AdaFilter options: ``(ok, message)`` pairs."""
    return [
        *_choices("adafilter", a, ADAFILTER_CHOICES),
        (a.eval_samples >= 1, "method.adafilter.eval_samples must be at least 1"),
        (
            a.gate_weight_decay is None or a.gate_weight_decay >= 0,
            "method.adafilter.gate_weight_decay must be 0 or more (or unset)",
        ),
        (a.temperature > 0, "method.adafilter.temperature must be positive"),
        (a.hidden >= 1, "method.adafilter.hidden must be at least 1"),
        (a.gate_lr > 0, "method.adafilter.gate_lr must be positive"),
        (
            a.gate_optimizer is None or a.gate_optimizer in OPTIMIZERS,
            f"method.adafilter.gate_optimizer must be {' or '.join(OPTIMIZERS)} (or unset: optim.optimizer); got '{a.gate_optimizer}'",
        ),
        (a.gate_warmup_epochs >= 0, "method.adafilter.gate_warmup_epochs must be 0 or more"),
        (
            a.usage_penalty >= 0 and 0 <= a.usage_target <= 1,
            "method.adafilter.usage_penalty must be >= 0 and usage_target in [0, 1]",
        ),
    ]


def baseline_checks(m: MethodConfig) -> list[tuple[bool, str]]:
    """Value checks of the Fine-Pruning, SpotTune, DELTA, BSS, WiSE-FT and LP-FT options."""
    fp, st = m.fine_pruning, m.spottune
    return [
        *_choices("fine_pruning", fp, FINE_PRUNING_CHOICES),
        *_choices("spottune", st, SPOTTUNE_CHOICES),
        *_choices("delta", m.delta, DELTA_CHOICES),
        (
            fp.rounds >= 1 and fp.trials >= 1 and fp.startup_trials >= 0,
            "method.fine_pruning.rounds and trials must be at least 1, startup_trials 0 or more",
        ),
        (
            min(fp.warmup_epochs, fp.trial_epochs, fp.round_epochs) >= 0 and fp.final_epochs >= 1,
            "method.fine_pruning epochs must be 0 or more (final_epochs at least 1)",
        ),
        (0.0 < fp.max_sparsity < 1.0, "method.fine_pruning.max_sparsity must lie strictly between 0 and 1"),
        (
            fp.lam >= 0 and fp.splice_every >= 1 and fp.min_layer_weights >= 0,
            "method.fine_pruning.lam and min_layer_weights must be 0 or more, splice_every at least 1",
        ),
        (
            fp.target_sparsity is None or 0.0 <= fp.target_sparsity < 1.0,
            "method.fine_pruning.target_sparsity must lie in [0, 1) or be null",
        ),
        (
            fp.target_compression is None or fp.target_compression >= 1.0,
            "method.fine_pruning.target_compression must be 1 or more (2 = half the weights zero) or null",
        ),
        (
            fp.target_sparsity is None or fp.target_compression is None,
            "set one of method.fine_pruning.target_sparsity and target_compression, not both",
        ),
        (fp.prune_every >= 1, "method.fine_pruning.prune_every must be at least 1"),
        (
            fp.allocation != "global" or fp.target_compression is not None,
            "method.fine_pruning.allocation=global prunes to a budget: set method.fine_pruning.target_compression",
        ),
        (fp.target_macs_ratio >= 1.0, "method.fine_pruning.target_macs_ratio must be 1 or more (2 = half the MACs)"),
        (
            st.temperature > 0 and st.policy_lr > 0 and st.policy_width >= 1,
            "method.spottune.temperature, policy_lr and policy_width must be positive",
        ),
        (
            m.delta.alpha >= 0 and m.delta.beta >= 0 and m.delta.attention_images >= 1,
            "method.delta.alpha and beta must be 0 or more, attention_images at least 1",
        ),
        (m.bss.k >= 1 and m.bss.eta >= 0, "method.bss.k must be at least 1 and eta 0 or more"),
        (0.0 <= m.wise_ft.alpha <= 1.0, "method.wise_ft.alpha must lie in [0, 1]"),
        (
            m.lp_ft.probe_epochs >= 1 and m.lp_ft.probe_lr > 0,
            "method.lp_ft.probe_epochs must be at least 1 and probe_lr positive",
        ),
    ]
