"""Process-group helpers so that ``torchrun --nproc_per_node=N`` runs the same code with DDP.

Without torchrun's environment (``WORLD_SIZE`` unset or 1) everything here is a no-op and the
training loop runs in one process.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist


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


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
