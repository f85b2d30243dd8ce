"""The "cpp" backend of the rotary position embedding (RoPE, LLaMA's rotate-half form) on CPU: one pass over
a q or k projection forward, one over its gradient backward (csrc/rotary.cpp).

transformers' version runs five tensor ops per tensor (two products, a negation, a concatenation and a sum)
forward and as many backward; this one reads the projection and the position's cos / sin once and writes
the rotated rows once, computing in float32 and rounding once (bf16/fp16). It keeps only cos and sin (the
model's shared position tables) for backward, as transformers' version does.
"""
from __future__ import annotations

import torch

from . import backend
from .cpp_backend import _C, is_available

OP_ROTARY = "rotary"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 1024


class RotaryEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, cos, sin):
        # rows [B, L, heads, d] contiguous; cos / sin [B or 1, L, d], not differentiated (position tables).
        ctx.save_for_backward(cos, sin)
        return _C.rotary_forward(rows, cos, sin)                                      # [B, L, heads, d]

    @staticmethod
    def backward(ctx, grad_out):
        cos, sin = ctx.saved_tensors
        return _C.rotary_backward(grad_out.contiguous(), cos, sin), None, None


def cpp_rotary(rows: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """rows * cos + rotate_half(rows) * sin for rows [B, L, heads, d] and cos / sin [B or 1, L, d]."""
    if torch.is_grad_enabled() and rows.requires_grad:
        return RotaryEmbedding.apply(rows, cos, sin)
    return _C.rotary_forward(rows, cos, sin)


def applies(rows: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether the kernel takes these operands: CPU, one supported dtype, contiguous [B, L, heads, d] rows and
    [B or 1, L, d] tables that need no gradient."""
    return (rows.device.type == "cpu" and rows.dtype in DTYPES and cos.dtype == rows.dtype and sin.dtype == rows.dtype
            and rows.dim() == 4 and rows.is_contiguous() and rows.shape[3] % 2 == 0 and rows.shape[3] <= MAX_HEAD_DIM
            and cos.dim() == 3 and cos.shape == sin.shape and cos.shape[0] in (1, rows.shape[0])
            and cos.shape[1] == rows.shape[1] and cos.shape[2] == rows.shape[3]
            and cos.is_contiguous() and sin.is_contiguous() and cos.device.type == "cpu" and sin.device.type == "cpu"
            and not (torch.is_grad_enabled() and (cos.requires_grad or sin.requires_grad))
            and backend.has_implementation(OP_ROTARY, "cpu"))


if is_available():
    backend.register(OP_ROTARY, "cpp", cpp_rotary)
