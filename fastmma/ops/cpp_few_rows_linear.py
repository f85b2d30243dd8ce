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


def few_rows_linear(linear: nn.Linear, x: torch.Tensor, weight_for) -> torch.Tensor:
    """linear(x) for x [..., K] with at most MAX_ROWS rows, in the dtype autocast would run it in.

    weight_for(linear, dtype): the weight in `dtype` (the autocast weight cache's copy when it differs).
    """
    dtype = _run_dtype(linear, x)
    rows = x.reshape(-1, x.shape[-1]).to(dtype)                                          # [M, K]
    bias = None if linear.bias is None else linear.bias.detach().to(dtype)
    weight = weight_for(linear, dtype).detach()
    if torch.is_grad_enabled() and x.requires_grad:
        out = FewRowsLinear.apply(rows, weight, bias)                                    # [M, N]
    else:
        out = _C.few_rows_linear_forward(rows, weight, bias)
    return out.view(*x.shape[:-1], out.shape[-1])


def applies(linear: nn.Module, x: torch.Tensor) -> bool:
    """A frozen plain nn.Linear on CPU, few rows, a dtype the kernel takes, with the backend choice allowing it."""
    rows = x.numel() // max(1, x.shape[-1])
    if not isinstance(linear, nn.Linear) or x.device.type != "cpu" or not 1 <= rows <= MAX_ROWS:
        return False
    weight, bias = linear.weight, linear.bias
    if weight.requires_grad or (bias is not None and bias.requires_grad) or type(weight) not in (torch.Tensor,
                                                                                                 nn.Parameter):
        return False
    return _run_dtype(linear, x) in DTYPES and backend.has_implementation(OP_FEW_ROWS_LINEAR, "cpu")


def _run_dtype(linear: nn.Linear, x: torch.Tensor) -> torch.dtype | None:
    """The dtype F.linear would compute in: autocast's, else the operands' common dtype (None if they differ)."""
    dtype = autocast_dtype(x.device.type, x.dtype, linear.weight.dtype)
    if dtype is not None:
        return dtype
    return x.dtype if x.dtype == linear.weight.dtype else None


if is_available():
    backend.register(OP_FEW_ROWS_LINEAR, "cpp", FewRowsLinear.apply)
