"""Launch-time choices shared by the kernels' Python helpers."""
from __future__ import annotations

import os

import torch
import triton

DECODE_MAX_ROWS = 16          # at most this many rows: the split-D decode kernels (norm_adapter_decode.py)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def rank_pad(rank: int) -> int:
    """The adapter rank padded to a power of two >= 16, the smallest tl.dot operand size."""
    return max(16, triton.next_power_of_2(rank))


def adapter_dot_precision(activation_dtype: torch.dtype) -> str:
    """tl.dot precision of the small rank-r products: exact fp32 ("ieee") in every dtype.

    Their results feed fp32 adapter gradients, not only outputs rounded to bf16/fp16: with "tf32" (up
    operands rounded to a 10-bit mantissa) an H100 made the fp16 down-bias gradient 3x plain PyTorch's
    error. The products are at most 64 wide (r padded to a power of two >= 16); their cost against tf32 was
    not timed separately (every kernel timing in docs/kernels.md is with "ieee").
    """
    return "ieee"


def segment_blocks(max_segment_rows: int, block_rows: int) -> int:
    """Row blocks per segment in a (table, block) grid."""
    return max(1, triton.cdiv(max_segment_rows, block_rows))


def target_programs(device: torch.device) -> int:
    """About how many programs keep the device busy (a few per SM on a GPU)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4
