"""Data-parallel helpers for ``torchrun --nproc_per_node=K {train,sample,likelihood}.py ...`` (gloo on CPU, nccl
on CUDA).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; without them everything
here is a no-op for a single process. Rank 0 alone writes files; the run directory is broadcast from rank 0 so
all ranks agree on it. Work that is split over ranks is split by whole batches (:func:`my_share`), so every batch
is computed exactly as in one process and the gathered result does not depend on the number of processes.
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


def my_share(items: list, info: DistInfo) -> list:
    """This rank's items when ``items`` (e.g. batches) are dealt round-robin over the ranks."""
    return items[info.rank :: info.world_size]


def gather_to_main(obj: Any, info: DistInfo) -> list | None:
    """Every rank's ``obj`` (in rank order) on rank 0, ``None`` on the others; ``[obj]`` in one process."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def interleave(shares: list[list], n: int) -> list:
    """Undo :func:`my_share`: the ``n`` items in their original order from each rank's share."""
    return [shares[i % len(shares)][i // len(shares)] for i in range(n)]


def secondary_rank_argv() -> list[str]:
    """Command-line overrides that keep ranks > 0 of a Hydra script from creating run directories of their own
    (rank 0 writes; a scratch directory, removed at exit, takes Hydra's)."""
    if env_rank() == 0:
        return []
    import atexit
    import shutil
    import tempfile

    scratch = tempfile.mkdtemp(prefix="scoresde-rank")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/hydra_logging=disabled"]


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
