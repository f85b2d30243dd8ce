"""The "cpp" backend of the SwiGLU product silu(gate) * up (fastmma.memory.swiglu): one pass forward,
one pass backward through the C++ extension, computed in float32 for float32/bf16/fp16 tensors.

Like the recomputing torch version it keeps only gate and up for backward. Registered only when the
extension is built.
"""
from __future__ import annotations

import torch

from . import backend
from .cpp_backend import _C, is_available

OP_SWIGLU = "swiglu"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class FusedSwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return _C.swiglu_forward(gate, up)

    @staticmethod
    def backward(ctx, grad_out):
        gate, up = ctx.saved_tensors
        grad_gate, grad_up = _C.swiglu_backward(grad_out, gate, up, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return grad_gate, grad_up


def cpp_swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return FusedSwiGLU.apply(gate, up)
    return _C.swiglu_forward(gate, up)


def applies(gate: torch.Tensor, up: torch.Tensor) -> bool:
    """Whether the kernel takes these operands (CPU, one dtype it handles, one shape)."""
    return (gate.device.type == "cpu" and gate.dtype in DTYPES and up.dtype == gate.dtype
            and up.shape == gate.shape)


if is_available():
    backend.register(OP_SWIGLU, "cpp", cpp_swiglu)
