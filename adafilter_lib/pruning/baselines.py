"""The pruning baselines a reviewer asks for beside Fine-Pruning, on the same path length and the same layers:

- ``prune_after_finetune`` (:func:`run_prune_after_finetune`): dense fine-tuning (``warmup_epochs + rounds *
  round_epochs``), one global magnitude prune, ``final_epochs`` of masked fine-tuning;
- ``gradual_magnitude`` (:func:`run_gradual_magnitude`): Zhu & Gupta (2017), "To prune, or not to prune"
  (arXiv 1710.01878): dense ``warmup_epochs``, then the sparsity rises on a cubic schedule during
  ``rounds * round_epochs`` epochs of fine-tuning, then ``final_epochs`` masked.

- ``channel_pruning`` (:func:`run_channel_pruning`): structured; dense fine-tuning as ``prune_after_finetune``,
  then whole channels removed with Torch-Pruning (:mod:`.structured`) until the network needs
  ``target_macs_ratio`` times fewer MACs, then ``final_epochs`` of fine-tuning the smaller, plain network.

The unstructured two prune the layers Fine-Pruning may prune (``min_layer_weights`` and up) with one global magnitude threshold
(masks through ``torch.nn.utils.prune``, :mod:`.masks`), to ``target_compression``, ``target_sparsity`` or the
sparsity of the matching ``fine_pruning`` run (:func:`target_sparsity`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import torch

from ..core import runs
from ..core.config import RunConfig
from ..core.errors import KitError
from . import masks as pruning
from . import structured
from .phases import dense_phase, eligible_layers, final_phase, finish, opened, save_state, start_state
from .session import Session


def matching_fine_pruning_dir(cfg: RunConfig) -> Path:
    """The ``fine_pruning`` run with the same dataset, backbone and seed as ``cfg`` (its default name)."""
    other = dataclasses.replace(cfg, run_name=None, method=dataclasses.replace(cfg.method, name="fine_pruning"))
    return other.run_dir()


def target_sparsity(cfg: RunConfig) -> float:
    """The sparsity (of every prunable weight) that ``prune_after_finetune`` and ``gradual_magnitude`` prune to:
    ``1 - 1 / target_compression``, else ``target_sparsity``, else that of the matching ``fine_pruning`` run.

    Raises:
        KitError: neither is set and the matching fine_pruning run has not finished.
    """
    opts = cfg.method.fine_pruning
    if opts.target_compression is not None:
        return 1.0 - 1.0 / opts.target_compression
    if opts.target_sparsity is not None:
        return opts.target_sparsity
    source = matching_fine_pruning_dir(cfg)
    if not runs.is_finished(source):
        raise KitError(
            f"{cfg.method.name} prunes to the sparsity of '{source}', which has not finished; run "
            f"`python -m adafilter_lib prune --method fine_pruning` with the same settings first, "
            f"or set method.fine_pruning.target_compression (or target_sparsity)"
        )
    return runs.read_summary(source)["sparsity"]


def run_prune_after_finetune(cfg: RunConfig, resume: bool = False, force: bool = False, progress: bool = True) -> dict:
    """Dense fine-tuning, one global magnitude prune to the target sparsity (:func:`target_sparsity`), masked
    fine-tuning; the same path length as Fine-Pruning's (warm-up + rounds x round epochs dense, then final epochs).

    Args:
        cfg: a config with ``method.name == "prune_after_finetune"``; epochs from ``method.fine_pruning``.
        resume, force, progress: as :func:`run_fine_pruning`.
    Returns:
        The summary written to ``summary.json``.
    """
    opts = cfg.method.fine_pruning
    target = target_sparsity(cfg)
    with opened(cfg, resume, force) as (folder, finished, state):
        if finished is not None:
            return finished
        session = Session(cfg, folder.staging, progress)
        state = start_state(session, folder, state)
        try:
            if state["done"] < 0:
                dense_phase(session, folder, state, opts.warmup_epochs + opts.rounds * opts.round_epochs, "dense")
            # The same layers as Fine-Pruning may prune, one global threshold, no splicing.
            pruning.set_masks(session.model, pruning.global_magnitude_masks(session.model, target, eligible_layers(session)))
            best = final_phase(session, None, state)
        except KitError as err:
            raise folder.abandon(err) from None
        return finish(session, folder, best, state, {"target_sparsity": target})


def cubic_sparsity(step: int, steps: int, final: float) -> float:
    """Zhu & Gupta (2017)'s schedule from 0 to ``final`` over ``steps``: ``final * (1 - (1 - step / steps) ** 3)``,
    fast at first, when many weights are redundant, and slow near the end, when few are."""
    return final * (1.0 - (1.0 - min(step, steps) / steps) ** 3)


def run_gradual_magnitude(cfg: RunConfig, resume: bool = False, force: bool = False, progress: bool = True) -> dict:
    """Gradual magnitude pruning during fine-tuning (Zhu & Gupta, 2017): dense warm-up, then the sparsity rises on
    :func:`cubic_sparsity` over ``rounds x round_epochs`` epochs (one global magnitude threshold over the layers
    Fine-Pruning may prune, masks updated every ``prune_every`` optimizer steps; pruned weights stay pruned),
    then ``final_epochs`` of masked fine-tuning: Fine-Pruning's path length.

    Args:
        cfg: a config with ``method.name == "gradual_magnitude"``; options in ``method.fine_pruning``.
        resume, force, progress: as :func:`run_fine_pruning`.
    Returns:
        The summary written to ``summary.json``.
    """
    opts = cfg.method.fine_pruning
    target = target_sparsity(cfg)
    with opened(cfg, resume, force) as (folder, finished, state):
        if finished is not None:
            return finished
        session = Session(cfg, folder.staging, progress)
        state = start_state(session, folder, state)
        eligible = eligible_layers(session)

        def prune_on_schedule(step: int, steps: int) -> None:
            if step % opts.prune_every == 0 or step == steps:
                masks = pruning.global_magnitude_masks(session.model, cubic_sparsity(step, steps, target), eligible)
                pruning.set_masks(session.model, masks)

        try:
            if state["done"] < 0:
                dense_phase(session, folder, state, opts.warmup_epochs, "warmup")
            if state["done"] < 1:
                start = time.perf_counter()
                ramp = opts.rounds * opts.round_epochs
                session.train(ramp, stream=1, record="gradual", on_step=prune_on_schedule)
                if ramp == 0:  # no ramp: prune at once (prune after fine-tuning, from the warm-up's weights)
                    pruning.set_masks(session.model, pruning.global_magnitude_masks(session.model, target, eligible))
                state["train_seconds"] += time.perf_counter() - start
                state["done"] = 1
                save_state(session, folder, state)
            best = final_phase(session, None, state)
        except KitError as err:
            raise folder.abandon(err) from None
        return finish(session, folder, best, state, {"target_sparsity": target})


def run_channel_pruning(cfg: RunConfig, resume: bool = False, force: bool = False, progress: bool = True) -> dict:
    """Dense fine-tuning (``warmup_epochs + rounds * round_epochs``), channel pruning to ``target_macs_ratio`` times
    fewer MACs (:func:`~adafilter_lib.pruning.structured.ratio_for_macs`), ``final_epochs`` of fine-tuning.

    The summary adds ``channel_ratio``, ``macs_ratio`` and ``params_ratio`` (dense ÷ pruned), the CPU or GPU
    latency ratios at batch 1 and 32 (:func:`~adafilter_lib.pruning.structured.latency_ratios`, dense and pruned
    timed interleaved in this process), and ``compression`` = the dense backbone's conv/linear weights ÷ the
    pruned backbone's. ``best.pt`` holds the smaller network's plain state dict.
    """
    opts, resolution = cfg.method.fine_pruning, cfg.data.resolution
    with opened(cfg, resume, force) as (folder, finished, state):
        if finished is not None:
            return finished
        session = Session(cfg, folder.staging, progress, masks=False)
        state = start_state(session, folder, state)
        try:
            if state["done"] < 0:
                dense_phase(session, folder, state, opts.warmup_epochs + opts.rounds * opts.round_epochs, "dense")
            dense = copy.deepcopy(session.model).cpu()  # for the cost comparison only: off the accelerator meanwhile
            ratio = structured.ratio_for_macs(session.model, opts.target_macs_ratio, resolution)
            structured.channel_prune(session.model, ratio, resolution)
            best = final_phase(session, None, state)
        except KitError as err:
            raise folder.abandon(err) from None
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        dense = dense.to(session.device, memory_format=memory_format)
        return finish(session, folder, best, state, {"channel_ratio": ratio, **structured_cost(dense, session.model, cfg)})


def structured_cost(dense, pruned, cfg: RunConfig) -> dict:
    """MACs, parameter and latency ratios (dense ÷ pruned) and the backbone's weight compression."""
    resolution = cfg.data.resolution
    (dense_macs, dense_params), (macs, params) = (structured.macs_and_params(m, resolution) for m in (dense, pruned))
    weights = [sum(m.weight.numel() for m in pruning.prunable_layers(model).values()) for model in (dense, pruned)]
    return {
        "macs_ratio": dense_macs / macs,
        "params_ratio": dense_params / params,
        "compression": weights[0] / weights[1],
        "sparsity": 1.0 - weights[1] / weights[0],
        **structured.latency_ratios(dense, pruned, resolution, cfg.channels_last, cfg.amp),
    }
