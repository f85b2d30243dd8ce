"""The "cpp" backend of the frozen RMSNorm's input gradient (fastmma.memory.rmsnorm) on CPU: one pass over each
row (csrc/rms_norm.cpp) where the torch version runs seven tensor ops, computed in float32 for
float32/bf16/fp16 operands of one dtype. Registered only when the extension is built.
"""
from __future__ import annotations

import torch

from . import backend
from .cpp_backend import _C, is_available

OP_RMS_NORM_INPUT_GRAD = "rms_norm_input_grad"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def applies(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernel takes these operands: CPU, one supported dtype, a [D] weight over x's last dim."""
    return (x.device.type == "cpu" and x.dtype in DTYPES and grad_y.dtype == x.dtype and weight.dtype == x.dtype
            and grad_y.shape == x.shape and x.dim() >= 1 and weight.shape == x.shape[-1:]
            and weight.device.type == "cpu" and backend.has_implementation(OP_RMS_NORM_INPUT_GRAD, "cpu"))


def input_grad(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """rstd * (g - n * mean(g * n)) with g = grad_y * weight (rounded to the dtype), n = x * rstd: x's gradient."""
    return _C.rms_norm_input_grad(grad_y.contiguous(), x.contiguous(), weight.contiguous(), rstd.contiguous())


if is_available():
    backend.register(OP_RMS_NORM_INPUT_GRAD, "cpp", input_grad)
