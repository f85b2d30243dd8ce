"""The "cpp" backend of the chunked loss's per-chunk softmax cross-entropy (fastmma.memory.chunked_loss).

`_C.cross_entropy_grad_` turns a vocab-major [V, chunk] logits buffer into the loss's gradient in place,
computing in float32 with float64 sums, whatever the buffer's dtype (float32, bfloat16 or float16): no
float32 copy of 16-bit logits and no per-token vectors are allocated. Registered only when the extension
is built.
"""
from __future__ import annotations

import torch

from . import backend
from .cpp_backend import _C, is_available

OP_CROSS_ENTROPY = "cross_entropy_grad"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def cross_entropy_grad_(logits: torch.Tensor, targets: torch.Tensor, grad_scale: float) -> float:
    """logits [V, chunk] become grad_scale * (softmax - onehot(targets)) per column; returns the summed loss."""
    return _C.cross_entropy_grad_(logits, targets, float(grad_scale))


def applies(device: torch.device, logits_dtype: torch.dtype) -> bool:
    """Whether the kernel takes logits of this dtype on this device, with the backend choice allowing it."""
    return (device.type == "cpu" and logits_dtype in DTYPES
            and backend.has_implementation(OP_CROSS_ENTROPY, "cpu"))


if is_available():
    backend.register(OP_CROSS_ENTROPY, "cpp", cross_entropy_grad_)
