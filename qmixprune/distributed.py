"""torch.distributed helpers: join the group torchrun describes, and who writes outputs."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init() -> bool:
    """Join the process group described by torchrun's environment (NCCL on GPUs, gloo on
    CPUs); a no-op in a single process. Returns whether a group is active."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def collective_device() -> torch.device:
    """Where tensors passed to collectives must live: this process's GPU under NCCL (which
    reduces only CUDA tensors), else the CPU (gloo, or no group at all)."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        from .device import resolve

        return resolve("cuda")  # cuda:$LOCAL_RANK under torchrun
    return torch.device("cpu")


def is_main() -> bool:
    """Whether this process writes outputs (rank 0, or the only process)."""
    return rank_world()[0] == 0


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()
