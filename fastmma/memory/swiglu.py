"""silu(gate) * up that keeps only `gate` and `up` for backward and recomputes the rest.

Autograd's plain version keeps gate (for silu), silu(gate) and up (for the product).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad_out):
        gate, up = ctx.saved_tensors
        compute = torch.promote_types(gate.dtype, torch.float32)      # at least fp32
        gate_c, up_c, grad_c = gate.to(compute), up.to(compute), grad_out.to(compute)
        sigmoid = torch.sigmoid(gate_c)
        grad_gate = grad_c * up_c * sigmoid * (1 + gate_c * (1 - sigmoid))
        grad_up = grad_c * gate_c * sigmoid
        return grad_gate.to(gate.dtype), grad_up.to(up.dtype)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _SwiGLU.apply(gate, up)
