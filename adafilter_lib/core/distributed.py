"""Process-group helpers so that ``torchrun --nproc_per_node=N`` runs the same code with DDP.

Without torchrun's environment (``WORLD_SIZE`` unset or 1) everything here is a no-op and the
training loop runs in one process.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); True if distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def local_device(requested: str) -> torch.device:
    """The device for this process: CUDA (this rank's local GPU) when available and allowed, else CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        from .errors import KitError

        raise KitError("device=cuda but no CUDA GPU is visible to PyTorch; use device=auto (GPU when there is one) or device=cpu")
    use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes (in place on a copy); identity in a single process."""
    if world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_object(obj: Optional[object]) -> object:
    """Rank 0's ``obj`` on every rank (used to share an error or a decision)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_zero_decides(decide: Callable[[], T]) -> T:
    """Run ``decide`` on rank 0 alone and give its outcome to every rank: its value, or its error raised on every
    rank (a :class:`~adafilter_lib.core.errors.KitError` keeps its class and message). One collective call, so no
    rank can leave for a barrier that the others never reach (a run that rank 0 found finished, or locked by
    another process, while the other ranks went on to train). In one process: ``decide()``.
    """
    if world_size() == 1:
        return decide()
    outcome, error = None, None
    if is_main():
        try:
            outcome = ("value", decide())
        except Exception as err:  # every rank must hear of it, or the others wait forever
            error, outcome = err, ("error", _portable(err))
    outcome = broadcast_object(outcome)
    if error is not None:
        raise error
    if outcome[0] == "value":
        return outcome[1]
    kind, message = outcome[1]
    from .errors import KitError, RunFailed

    raise {"RunFailed": RunFailed, "KitError": KitError}.get(kind, RuntimeError)(message)


def _portable(err: Exception) -> tuple[str, str]:
    """An exception as (class name, message): what every rank can rebuild without unpickling arbitrary objects."""
    from .errors import KitError, RunFailed

    kind = "RunFailed" if isinstance(err, RunFailed) else "KitError" if isinstance(err, KitError) else type(err).__name__
    return kind, str(err) if isinstance(err, KitError) else f"rank 0: {type(err).__name__}: {err}"


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
