"""The per-method option dataclasses of a run: ``RunConfig.method`` (:class:`MethodConfig`).

One dataclass per method family (its options live under ``method.<family>.*`` in YAML and ``--set``);
:mod:`adafilter_lib.config` assembles them into the run configuration and validates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


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
    target_sparsity: Optional[float] = None  # prune_after_finetune: None = the sparsity of the matching fine_pruning run


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
class MethodConfig:
    name: str = "finetune"
    l2sp: L2SPConfig = field(default_factory=L2SPConfig)
    adafilter: AdaFilterConfig = field(default_factory=AdaFilterConfig)
    fine_pruning: FinePruningConfig = field(default_factory=FinePruningConfig)
    spottune: SpotTuneConfig = field(default_factory=SpotTuneConfig)
    delta: DeltaConfig = field(default_factory=DeltaConfig)
    bss: BSSConfig = field(default_factory=BSSConfig)
    wise_ft: WiseFTConfig = field(default_factory=WiseFTConfig)
