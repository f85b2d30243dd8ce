"""Every buffer a kernel launch writes is allocated here.

One allocation point lets tests fill new buffers with NaN, so an element a kernel
forgets to write shows up as a failure instead of passing by luck.
"""
from __future__ import annotations

import torch


def new_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor the caller's kernels will fully overwrite."""
    return torch.empty(shape, dtype=dtype, device=device)
