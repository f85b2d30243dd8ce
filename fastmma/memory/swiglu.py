"""silu(gate) * up that keeps only `gate` and `up` for backward and recomputes the rest.

Autograd's plain version keeps gate (for silu), silu(gate) and up (for the product). On CPU, in
float32/bf16/fp16, the C++ kernel (fastmma/ops/cpp_swiglu.py) does the product and its backward in
one pass each; elsewhere (or with FASTMMA_BACKEND=torch/reference) the same kernels as autograd's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops import backend, cpp_swiglu


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad_out):
        # The same kernels and roundings as autograd's plain version (mul's backward, then silu_backward),
        # so the gradients are identical; the temporaries stay in the inputs' dtype.
        gate, up = ctx.saved_tensors
        grad_gate = torch.ops.aten.silu_backward(grad_out * up, gate) if ctx.needs_input_grad[0] else None
        grad_up = grad_out * F.silu(gate) if ctx.needs_input_grad[1] else None
        return grad_gate, grad_up


class _SavesOnly(torch.autograd.Function):
    """Saves what `swiglu` saves for backward (gate, up) and computes nothing: for a decoder layer's replay in
    backward (memory/layer_recompute.py), which needs only the saved tensors and stops at the last of them."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return gate.new_empty(gate.shape)                    # never read: the replay stops before its use

    @staticmethod
    def backward(ctx, grad_out):
        raise RuntimeError("fastmma: the SwiGLU product of a layer replay has no backward (its graph is discarded)")


def swiglu_saves_only(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """In a layer replay: the tensors `swiglu(gate, up)` saves, without the product."""
    return _SavesOnly.apply(gate, up)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if cpp_swiglu.applies(gate, up) and backend.has_implementation(cpp_swiglu.OP_SWIGLU, "cpu"):
        return cpp_swiglu.cpp_swiglu(gate, up)
    if not (torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad)):
        return F.silu(gate) * up                  # nothing to save: skip the autograd.Function's overhead
    return _SwiGLU.apply(gate, up)
