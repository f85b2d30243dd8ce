"""Counting what DDP all-reduces: a communication hook that does DDP's usual all-reduce and records bytes."""
from __future__ import annotations

import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel


class AllReduceCounter:
    """Its `hook` all-reduces (averages) each gradient bucket exactly as DDP's default does, and adds the
    bucket's size to `bytes` (and 1 to `buckets`). Register it with `count_all_reduced_bytes`."""

    def __init__(self, process_group: dist.ProcessGroup | None = None):
        self.process_group = process_group
        self.bytes = 0
        self.buckets = 0

    def hook(self, state, bucket):
        # (no annotations: DDP compares them to the real types, and this module's are strings)
        buffer = bucket.buffer()                                     # the flattened gradients of the bucket
        self.bytes += buffer.numel() * buffer.element_size()
        self.buckets += 1
        return allreduce_hook(self.process_group, bucket)

    def take(self) -> int:
        """Bytes counted since the last call (e.g. one optimizer step's), and start counting again."""
        counted, self.bytes, self.buckets = self.bytes, 0, 0
        return counted


def count_all_reduced_bytes(ddp_model: DistributedDataParallel) -> AllReduceCounter:
    """Install an AllReduceCounter on a DDP model (before its first backward) and return it."""
    if not isinstance(ddp_model, DistributedDataParallel):
        raise TypeError(f"count_all_reduced_bytes takes a DistributedDataParallel model; got "
                        f"{type(ddp_model).__name__}")
    counter = AllReduceCounter(ddp_model.process_group)
    ddp_model.register_comm_hook(state=None, hook=counter.hook)
    return counter
