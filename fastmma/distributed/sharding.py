"""Splitting a global batch over ranks so that the ranks together see exactly the single-process batch."""
from __future__ import annotations

from typing import Sequence, TypeVar

T = TypeVar("T")


def check_divisible(global_batch_size: int, world_size: int, what: str = "batch_size") -> int:
    """Samples per rank; a ValueError that says what to change when the batch does not split evenly."""
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1; got {world_size}")
    if global_batch_size % world_size:
        raise ValueError(f"{what}={global_batch_size} does not split evenly over {world_size} processes: make it a "
                         f"multiple of {world_size}, or launch a number of processes that divides it")
    return global_batch_size // world_size


def rank_shard(global_batch: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank `rank`'s contiguous share of a global batch: items [rank * n, (rank + 1) * n), n = len / world_size.

    The shards of ranks 0, 1, ... concatenated give the global batch back, in order.
    """
    per_rank = check_divisible(len(global_batch), world_size, what="the global batch size")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size - 1}]")
    return list(global_batch[rank * per_rank:(rank + 1) * per_rank])
