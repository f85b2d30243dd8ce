"""Multi-process data-parallel training of fastmma models (torchrun / accelerate launch, DDP; gloo or nccl)."""
from .comm_stats import AllReduceCounter, count_all_reduced_bytes
from .ddp import gradient_sync, unwrap, wrap_ddp
from .process_group import (all_reduce_sum, barrier, default_backend, init_distributed, is_distributed,
                            is_main_process, launched_world_size, local_rank, rank, rank_device, shutdown,
                            world_size)
from .sharding import check_divisible, rank_shard

__all__ = ["AllReduceCounter", "all_reduce_sum", "barrier", "check_divisible", "count_all_reduced_bytes",
           "default_backend", "gradient_sync", "init_distributed", "is_distributed", "is_main_process",
           "launched_world_size", "local_rank", "rank", "rank_device", "rank_shard", "shutdown", "unwrap",
           "world_size"]
