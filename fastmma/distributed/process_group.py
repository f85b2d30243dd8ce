"""Joining the process group a launcher describes, and the rank helpers the rest of fastmma uses.

torchrun (and `accelerate launch`) start one process per worker and tell each, through the
environment, who it is: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT. Without them
(a plain `python3 ...`) every helper here answers as the only process: rank 0 of 1.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT_ENV = "FASTMMA_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
_REQUIRED_ENV = ("RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_world_size() -> int:
    """WORLD_SIZE as the launcher set it (1 when the process was not started by a launcher)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(value)
    except ValueError:
        raise ValueError(f"WORLD_SIZE={value!r} is not an integer; it is set by torchrun, do not set it by hand") \
            from None
    if world < 1:
        raise ValueError(f"WORLD_SIZE={world} must be at least 1")
    return world


def default_backend() -> str:
    """"nccl" when this process can use a CUDA device, else "gloo"."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(backend: str | None = None, timeout_s: float | None = None) -> bool:
    """Join the process group the launcher describes. Returns True when there is more than one process.

    Does nothing (and returns False) when WORLD_SIZE is unset or 1, and only reports when the
    default group already exists (e.g. Accelerate created it).
    backend: None -> nccl with CUDA (and this process's device set to cuda:LOCAL_RANK), else gloo.
    timeout_s: how long a collective waits for the other ranks before it fails (default
        $FASTMMA_DIST_TIMEOUT, else 1800 s). It bounds how long a rank can hang on a peer that died.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    world = launched_world_size()
    if world == 1:
        return False
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} asks for {world} processes, but this PyTorch build has no "
                           f"torch.distributed")
    missing = [name for name in _REQUIRED_ENV if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} is set but {missing} are not; start the job with torchrun "
                         f"(torchrun --nproc_per_node {world} ...) or accelerate launch, which set them all")
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, timeout=timedelta(seconds=_timeout_s(timeout_s)),
                            rank=int(os.environ["RANK"]), world_size=world)
    return True


def shutdown() -> None:
    """Leave the process group (a no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its machine (LOCAL_RANK), which picks its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0, the one process that prints, shows progress and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def rank_device() -> torch.device:
    """The device this rank trains on: cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """The sum of `values` over all ranks, element by element (float64); `values` itself in a single process."""
    if not is_distributed():
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    summed = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    return summed.tolist()


def _timeout_s(timeout_s: float | None) -> float:
    if timeout_s is None:
        raw = os.environ.get(TIMEOUT_ENV)
        try:
            timeout_s = float(raw) if raw is not None else DEFAULT_TIMEOUT_S
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV}={raw!r} must be a number of seconds") from None
    if not timeout_s > 0:
        raise ValueError(f"the process-group timeout must be positive; got {timeout_s} s")
    return timeout_s
