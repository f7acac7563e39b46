"""Fine-Pruning's Bayesian optimization (one Optuna study per round in SQLite), and reading studies back.

A trial proposes, per group (stage or layer), ``u = log10(1 / (1 - sparsity))``, i.e. the log10 of the
group's compression, between the group's current value and ``max_sparsity``'s (with ``gradual``, round
``r`` of ``R`` goes up to ``r / R`` of it). On that scale 90% and 99% sparsity are as far apart as 0% and
90%, which is where the accuracy/size trade-off lives.
With ``target_compression`` (a fixed budget, for fronts at 2x, 4x, ...), the proposal is an allocation: every
group's value is shifted by one common amount (the same factor on every group's kept fraction) so that the
whole network reaches the round's budget exactly (:func:`budget_fractions`; with ``gradual``, round ``r`` of
``R`` reaches ``target ** (r / R)``), and the objective is validation accuracy alone.
The study of round ``r`` is ``round_<r>`` in ``study.db``; finished trials are never repeated: a
resumed round runs only the trials it still misses, and trials left ``RUNNING`` by a killed process
are marked ``FAIL``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Optional

import pandas as pd

from ..core.errors import KitError, RunFailed
from . import pruned_state

_SEED_STRIDE = 7919  # a distinct, reproducible sampler seed per round


def _optuna():
    try:
        import optuna
    except ImportError:
        raise KitError(
            "Fine-Pruning needs Optuna; run: pip install 'adafilter-kit[optimization]' (or pip install optuna)"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per round is printed by the kit instead
    return optuna


def make_sampler(kind: str, seed: int, startup_trials: int):
    """Optuna's Gaussian-process sampler (``"gp"``) or TPE (``"tpe"``), seeded."""
    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials, multivariate=True)


def open_study(db_path: Path, round_index: int, sampler=None):
    """The study ``round_<r>`` in the SQLite file ``db_path`` (created, or loaded with its trials)."""
    optuna = _optuna()
    return optuna.create_study(
        storage=f"sqlite:///{Path(db_path).resolve()}",
        study_name=f"round_{round_index}",
        direction="maximize",
        sampler=sampler,
        load_if_exists=True,
    )


def fail_stale_trials(study) -> int:
    """Mark trials left RUNNING by a killed process as FAIL; returns how many."""
    optuna = _optuna()
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return len(stale)


def to_log_compression(sparsity: float) -> float:
    return -math.log10(1.0 - sparsity)


def to_sparsity(log_compression: float) -> float:
    return 1.0 - 10.0 ** (-log_compression)


def objective_value(val_top1_err: float, compression: float, sparsity: float, lam: float, term: str) -> float:
    """``val_accuracy + lam * compression_term``; accuracy in [0, 1], term log10(compression) or sparsity."""
    return (1.0 - val_top1_err / 100.0) + lam * (math.log10(compression) if term == "log10" else sparsity)


def budget_fractions(
    proposal: dict[str, float],
    low: dict[str, float],
    high: float,
    group_weights: dict[str, int],
    fixed_nonzero: int,
    total: int,
    compression: float,
) -> dict[str, float]:
    """Shift a proposal of log10 compressions by one common amount so that the network reaches ``compression``.

    Args:
        proposal: {group: log10 compression proposed}; low: {group: its current value (a floor)};
        high: the log10 compression of ``max_sparsity`` (a ceiling for every group).
        group_weights: {group: weights}; fixed_nonzero: nonzero weights of layers in no group (never pruned);
        total: every prunable weight (the compression's numerator).
    Returns:
        {group: sparsity}. No group goes below its floor or above the ceiling: if even every group at ``high``
        cannot reach the budget, every group is at ``high``; if the floors already go past it, they stay.
    """

    def nonzero(shift: float) -> float:
        kept = {g: 10.0 ** -min(max(proposal[g] + shift, low[g]), high) for g in proposal}
        return fixed_nonzero + sum(group_weights[g] * kept[g] for g in proposal)

    wanted, lo, hi = total / compression, -10.0, 10.0  # the shift moves 10 decades either way: every clip reached
    for _ in range(100):  # bisection: nonzero() falls as the shift grows
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if nonzero(mid) > wanted else (lo, mid)
    return {g: to_sparsity(min(max(proposal[g] + hi, low[g]), high)) for g in proposal}


def run_round(session, round_index: int, fractions: dict[str, float], trial_hook=None) -> dict[str, float]:
    """Run (or finish) round ``round_index``'s study; return the best trial's {group: fraction}.

    Every trial starts from the model's current weights, which are restored afterwards.
    """
    optuna = _optuna()
    opts = session.opts
    start = session.snapshot()
    sampler = make_sampler(opts.sampler, session.cfg.seed * _SEED_STRIDE + round_index, opts.startup_trials)
    study = open_study(session.staging / "study.db", round_index, sampler)
    fail_stale_trials(study)
    low = {g: to_log_compression(f) for g, f in fractions.items()}
    high = to_log_compression(opts.max_sparsity)
    step = (round_index + 1) / opts.rounds if opts.gradual else 1.0
    budget = round_budget(opts, round_index)
    if opts.gradual and budget is None:  # prune step by step: a network pruned 98% in one go has nothing left to fine-tune from
        high *= step
    if round_index > 0 and not study.trials:
        study.enqueue_trial(low)  # the current fractions are always a candidate: a round may keep them

    def objective(trial) -> float:
        if trial_hook is not None:
            trial_hook(round_index, trial.number)
        proposal = {g: trial.suggest_float(g, low[g], max(low[g], high)) for g in fractions}
        session.model.load_state_dict(start)
        if budget is None:
            proposal = {g: to_sparsity(u) for g, u in proposal.items()}
        else:
            proposal = budget_fractions(proposal, low, high, *_budget_counts(session), budget)
            trial.set_user_attr("budget", budget)  # trials.csv: the compression reached beside it
        session.apply(proposal, dense=opts.splice)
        try:
            val_err = session.train(opts.trial_epochs, stream=1 + round_index, fractions=proposal)
        except RunFailed as err:  # a proposal that blows up is a failed trial, not a failed run
            trial.set_user_attr("failure", str(err))
            raise optuna.TrialPruned() from None
        stats = pruned_state.compression_stats(session.model)
        trial.set_user_attr("val_top1_err", val_err)
        trial.set_user_attr("compression", stats["compression"])
        trial.set_user_attr("sparsity", stats["sparsity"])
        trial.set_user_attr("fractions", proposal)
        if budget is not None:  # the budget fixes the compression: accuracy alone decides
            return 1.0 - val_err / 100.0
        return objective_value(val_err, stats["compression"], stats["sparsity"], opts.lam, opts.compression_term)

    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    try:
        if done < opts.trials:
            study.optimize(objective, n_trials=opts.trials - done, catch=())
    finally:
        session.model.load_state_dict(start)
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        failures = [t.user_attrs.get("failure", "") for t in study.trials if t.user_attrs.get("failure")]
        raise RunFailed(
            f"every trial of Fine-Pruning round {round_index + 1} failed (first: {failures[0] if failures else 'no trial ran'}); "
            f"lower optim.lr or method.fine_pruning.max_sparsity"
        )
    best = study.best_trial
    if session.progress:
        attrs = best.user_attrs
        print(
            f"[{session.cfg.resolved_run_name()}] round {round_index + 1}: best of {opts.trials} trials: val err "
            f"{attrs['val_top1_err']:.1f}%, compression {attrs['compression']:.1f}x (objective {best.value:.3f})",
            flush=True,
        )
    return {g: float(f) for g, f in best.user_attrs["fractions"].items()}


def round_budget(opts, round_index: int) -> Optional[float]:
    """The compression round ``round_index`` (0-based) works at: ``target_compression`` reached in equal log steps
    over the rounds (``gradual``) or at once; None without a target (``lam`` trades accuracy against compression)."""
    if opts.target_compression is None:
        return None
    return opts.target_compression ** ((round_index + 1) / opts.rounds if opts.gradual else 1.0)


def global_allocation(session, round_index: int) -> dict[str, float]:
    """{group: fraction} that one global magnitude threshold over the prunable groups gives at the round's budget:
    no trials. The weights already pruned rank first (at zero), so no fraction shrinks from round to round."""
    from .masks import global_magnitude_masks

    budget = round_budget(session.opts, round_index)
    eligible = [n for names in session.groups.values() for n in names]
    masks = global_magnitude_masks(session.model, 1.0 - 1.0 / budget, eligible)
    return {
        group: float(sum(int((masks[n] == 0).sum()) for n in names) / sum(masks[n].numel() for n in names))
        for group, names in session.groups.items()
    }


def _budget_counts(session) -> tuple[dict[str, int], int, int]:
    """{group: weights}, nonzero weights of the layers in no group, and every prunable weight of the session's model."""
    from .masks import effective_weight, prunable_layers

    layers = prunable_layers(session.model)
    grouped = {n for names in session.groups.values() for n in names}
    weights = {g: sum(effective_weight(layers[n]).numel() for n in names) for g, names in session.groups.items()}
    fixed = sum(int(effective_weight(m).count_nonzero()) for n, m in layers.items() if n not in grouped)
    return weights, fixed, sum(effective_weight(m).numel() for m in layers.values())


def trials_frame(db_path: Path) -> pd.DataFrame:
    """Every trial of every round in ``db_path``.

    Returns:
        Columns ``round`` (1-based), ``trial``, ``state``, ``objective``, ``val_top1_err``,
        ``compression``, ``sparsity``, ``budget`` (the round's target compression, if any; a trial below it hit
        ``max_sparsity`` or its floors), ``best_in_round`` and ``frac_<group>`` per group.
    """
    optuna = _optuna()
    storage = f"sqlite:///{Path(db_path).resolve()}"
    rows = []
    for summary in sorted(optuna.get_all_study_summaries(storage), key=lambda s: int(s.study_name.split("_")[1])):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        best_number = max(complete, key=lambda t: t.value).number if complete else None
        for t in study.trials:
            attrs = t.user_attrs
            rows.append(
                {
                    "round": int(summary.study_name.split("_")[1]) + 1,
                    "trial": t.number,
                    "state": t.state.name,
                    "objective": t.value,
                    "val_top1_err": attrs.get("val_top1_err"),
                    "compression": attrs.get("compression"),
                    "sparsity": attrs.get("sparsity"),
                    "budget": attrs.get("budget"),
                    "best_in_round": t.number == best_number,
                    **{f"frac_{g}": f for g, f in attrs.get("fractions", {}).items()},
                }
            )
    return pd.DataFrame(rows)
