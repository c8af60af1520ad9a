"""Multi-process (DDP) plumbing: one process per device, started by submitit (several tasks) or torchrun.

``init_distributed`` turns the launcher's environment into a process group and says which device this
process trains on. Without a multi-process launcher it returns a world of one and creates no group, so
every caller can use the same code path. The collectives below are no-ops in a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from bench.errors import UsageError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    backend: str | None
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def _local_device(device_type: str, local_rank: int) -> torch.device:
    if device_type != "cuda":
        return torch.device(device_type)
    # a scheduler that binds one GPU per task (CUDA_VISIBLE_DEVICES) leaves each process a single cuda:0
    return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))


def _export_submitit_env() -> None:
    """Inside a submitit job of several tasks, set MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE/LOCAL_RANK."""
    try:
        import submitit

        job = submitit.JobEnvironment()
    except (ImportError, RuntimeError):  # not a submitit job: torchrun's variables, or a single process
        return
    if job.num_tasks > 1:
        # keep every GPU visible: the device is picked by local rank, and NCCL can then use peer access
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def _current_env(device_type: str) -> DistEnv:
    r = dist.get_rank()
    local = int(os.environ.get("LOCAL_RANK", r))
    return DistEnv(r, local, dist.get_world_size(), str(dist.get_backend()), _local_device(device_type, local))


def init_distributed(device_type: str) -> DistEnv:
    """Join the process group the launcher describes (idempotent); a world of one when there is none."""
    device_type = torch.device(device_type).type
    if is_initialized():
        return _current_env(device_type)
    _export_submitit_env()
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if world <= 1:
        return DistEnv(0, 0, 1, None, torch.device(device_type))
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise UsageError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch with torchrun or submitit")
    r = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", r))
    backend = "nccl" if device_type == "cuda" else "gloo"
    device = _local_device(device_type, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives and barriers use the current device
    dist.init_process_group(backend=backend, rank=r, world_size=world)
    return DistEnv(r, local, world, backend, device)


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() <= 1:
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks, in place (a non-finite value on any rank makes the mean non-finite)."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= world_size()
    return t


def all_reduce_max(value: float, device: torch.device) -> float:
    if world_size() <= 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_gather_object(obj: Any) -> list[Any]:
    if world_size() <= 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
