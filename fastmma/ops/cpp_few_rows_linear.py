"""The "cpp" backend of a frozen Linear on a few rows: the modality pass's one row per modality.

For two rows a GEMM library spends most of its time packing the weight; `_C.few_rows_linear_*` read
each weight row once for all the rows instead, forward (y = x W^T + b) and backward (grad_x = grad_y W),
computing in float32 for float32/bf16/fp16 operands. The weight and bias are frozen: they get no
gradient. Registered only when the extension is built.
"""
from __future__ import annotations

import torch
from torch import nn

from . import backend
from .cpp_backend import _C, is_available
from ..autocast import autocast_dtype

OP_FEW_ROWS_LINEAR = "few_rows_linear"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_ROWS = 8


class FewRowsLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        # x [M, K], weight [N, K] and bias [N] frozen
        ctx.save_for_backward(weight)
        return _C.few_rows_linear_forward(x, weight, bias)                              # [M, N]

    @staticmethod
    def backward(ctx, grad_y):
        (weight,) = ctx.saved_tensors
        grad_x = _C.few_rows_linear_backward(grad_y, weight) if ctx.needs_input_grad[0] else None
        return grad_x, None, None


def run_dtype(linear: nn.Module, x: torch.Tensor) -> torch.dtype | None:
    """The dtype the kernel would run `linear(x)` in (autocast's, else the operands' common one), or None when
    the kernel does not apply: not a frozen plain nn.Linear on CPU, not 1 to MAX_ROWS rows, a dtype it does not
    take, or a backend choice that rules it out."""
    rows = x.numel() // max(1, x.shape[-1])
    if not isinstance(linear, nn.Linear) or x.device.type != "cpu" or not 1 <= rows <= MAX_ROWS:
        return None
    weight, bias = linear.weight, linear.bias
    if weight.requires_grad or (bias is not None and bias.requires_grad) or type(weight) not in (torch.Tensor,
                                                                                                 nn.Parameter):
        return None
    dtype = autocast_dtype(x.device.type, x.dtype, weight.dtype) or (x.dtype if x.dtype == weight.dtype else None)
    if dtype not in DTYPES or not backend.has_implementation(OP_FEW_ROWS_LINEAR, "cpu"):
        return None
    return dtype


def few_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    dtype: torch.dtype) -> torch.Tensor:
    """F.linear(x, weight, bias) in `dtype` for x [..., K] of at most MAX_ROWS rows (see `run_dtype`);
    `weight` is already in `dtype` (e.g. the autocast weight cache's copy)."""
    rows = x.reshape(-1, x.shape[-1]).to(dtype)                                          # [M, K]
    bias = None if bias is None else bias.detach().to(dtype)
    weight = weight.detach()
    if torch.is_grad_enabled() and x.requires_grad:
        out = FewRowsLinear.apply(rows, weight, bias)                                    # [M, N]
    else:
        out = _C.few_rows_linear_forward(rows, weight, bias)
    return out.view(*x.shape[:-1], out.shape[-1])


if is_available():
    backend.register(OP_FEW_ROWS_LINEAR, "cpp", FewRowsLinear.apply)
