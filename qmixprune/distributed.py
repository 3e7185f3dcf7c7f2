"""torch.distributed helpers: join the group torchrun describes, and who writes outputs."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init(device: torch.device | str | None = None) -> bool:
    """Join the process group described by torchrun's environment; a no-op in a single
    process. Returns whether a group is active.

    ``device`` is the run's device (a ``device.resolve`` spec; default ``auto``, which under
    torchrun is ``cuda:$LOCAL_RANK`` when GPUs are visible). On a GPU the process binds to it
    (``torch.cuda.set_device``) and joins with NCCL; on the CPU with gloo."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    from .device import resolve

    dev = resolve(device)
    if dev.type == "cuda":
        # before the group exists, so NCCL's communicator and every later collective, barrier
        # and default CUDA tensor use this rank's GPU rather than all landing on GPU 0
        torch.cuda.set_device(dev)
    dist.init_process_group(backend_for(dev))
    return True


def backend_for(device: torch.device) -> str:
    """The collective backend for a device: NCCL for CUDA GPUs, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def collective_device(device: torch.device | None = None) -> torch.device:
    """Where tensors passed to collectives must live: this process's GPU under NCCL (which
    reduces only CUDA tensors), else the CPU (gloo, or no group at all). ``device``: the
    caller's CUDA device (an evaluator's, a model's); without it the current device, which
    is the rank's GPU only where ``init`` bound it."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        if device is not None and device.type == "cuda" and device.index is not None:
            return device
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def is_main() -> bool:
    """Whether this process writes outputs (rank 0, or the only process)."""
    return rank_world()[0] == 0


def barrier(device: torch.device | None = None) -> None:
    """Wait for every rank (``device``: this rank's GPU, see ``collective_device``)."""
    if rank_world()[1] > 1:
        dev = collective_device(device)
        # NCCL otherwise guesses the GPU for its barrier (and warns)
        dist.barrier(device_ids=[dev.index] if dev.type == "cuda" else None)
