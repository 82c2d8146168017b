"""Data-parallel helpers for ``torchrun --nproc_per_node=K train.py ...`` (DDP; gloo on CPU, nccl on CUDA).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; without them everything
here is a no-op for a single process. Rank 0 alone writes files; the run directory is broadcast from rank 0 so
all ranks agree on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _adopt_slurm_env() -> None:
    """Under ``srun`` with several tasks (e.g. hydra-submitit-launcher with tasks_per_node > 1) and no torchrun,
    take rank / world size / local rank from SLURM's variables (MASTER_ADDR / MASTER_PORT come from the launcher's
    ``setup`` lines)."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def env_world_size() -> int:
    _adopt_slurm_env()
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    _adopt_slurm_env()
    return int(os.environ.get("RANK", "0"))


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA (the process's local GPU) when available, else CPU."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(preference)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={preference!r} is not a device (auto, cpu, cuda, cuda:K)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={preference!r} but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else a single-process DistInfo."""
    world = env_world_size()  # torchrun's variables, or SLURM's under srun
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world <= 1:
        return DistInfo(device=device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
