"""The "cpp" backend: fused RMSNorm + MMA adapter on CPU through the C++ extension `fastmma._C`.

Both routing forms become one kernel call. The router is folded into per-row tables first,
with ordinary autograd ops (small: [T, r/G, D]), so their gradients reach the router weights,
U and c through autograd:
- per sample: table b = scale * sum_e w[b, e] U_e, row (b, l) reads table b;
- per token:  table e = scale * U_e, row (b, l) reads table expert_ids[b, l].
The kernel saves x, rstd [M] and h [M, r]; its backward recomputes the norm.
This module imports without the extension; `is_available()` tells whether it was built.
"""
from __future__ import annotations

import torch

from . import backend
from .norm_adapter import OP_FOLDED, OP_PER_SAMPLE, OP_PER_TOKEN, FoldedAdapter, mix_experts

try:
    from .. import _C
except ImportError:      # built without the extension (FASTMMA_SKIP_CPP=1, or no compiler)
    _C = None


def is_available() -> bool:
    return _C is not None


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class FusedRMSNormAdapter(torch.autograd.Function):
    """y = n + bias_table[t] + up_table[t] h with n = RMSNorm(x), h = (A n + a) * h_mask, t = table_index[row]."""

    @staticmethod
    def forward(ctx, x, norm_weight, eps, down_weight, down_bias, up_table, bias_table, table_index, h_mask):
        x_rows = x.reshape(-1, x.shape[-1])                                           # [M, D]
        y, rstd, h = _C.rms_norm_adapter_forward(x_rows, norm_weight, eps, down_weight, down_bias, up_table,
                                                 bias_table, table_index, h_mask)  # [M, D], [M], [M, r]
        ctx.save_for_backward(x_rows, norm_weight, rstd, h, h_mask, down_weight, up_table, table_index)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, grad_y):
        x_rows, norm_weight, rstd, h, h_mask, down_weight, up_table, table_index = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_rows = grad_y.reshape(x_rows.shape).to(x_rows.dtype)
        grad_x, grad_norm_weight, grad_down_weight, grad_down_bias, grad_up_table, grad_bias_table = (
            _C.rms_norm_adapter_backward(grad_rows, x_rows, norm_weight, rstd, h, h_mask, down_weight, up_table,
                                         table_index, needs[0], needs[1], needs[3] or needs[4], needs[5] or needs[6]))
        if grad_x is not None:
            grad_x = grad_x.view(grad_y.shape)
        return (grad_x, grad_norm_weight, None, grad_down_weight, grad_down_bias, grad_up_table, grad_bias_table,
                None, None)


def _check_x(x: torch.Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"rms_norm_adapter expects x of shape [batch, length, hidden]; got {tuple(x.shape)}")


def _fused(x, norm_weight, eps, down_weight, down_bias, up_table, bias_table, table_index, h_mask):
    acc = _accumulation_dtype(x)
    mask_rows = None if h_mask is None else h_mask.reshape(-1, down_weight.shape[0]).to(acc)   # [M, r]
    return FusedRMSNormAdapter.apply(x, norm_weight.to(acc), float(eps), down_weight.to(acc), down_bias.to(acc),
                                     up_table.contiguous(), bias_table.contiguous(), table_index, mask_rows)


# Both ops turn CPU autocast off: it would build the tables in bf16, and the kernels choose their own
# precision (x's dtype in and out, fp32 accumulation).
@torch.autocast(device_type="cpu", enabled=False)
def cpp_rms_norm_adapter(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias, router_weights, scale,
                         h_mask=None):
    """Per-sample routing: router_weights [B, E]."""
    _check_x(x)
    batch, length = x.shape[0], x.shape[1]
    if router_weights.dim() != 2 or router_weights.shape[0] != batch:
        raise ValueError(f"router_weights must have shape [batch={batch}, experts]; got {tuple(router_weights.shape)}")
    acc = _accumulation_dtype(x)
    weights = router_weights.to(acc)                                                   # [B, E]
    # routed_up_projection's sum, in the kernel's [B, r/G, D] layout
    up_table = scale * mix_experts(weights, up_weight.to(acc).transpose(1, 2))       # [B, r/G, D]
    bias_table = scale * mix_experts(weights, up_bias.to(acc))                         # [B, D]
    table_index = torch.arange(batch, device=x.device).repeat_interleave(length)       # [B*L]
    return _fused(x, norm_weight, eps, down_weight, down_bias, up_table, bias_table, table_index, h_mask)


@torch.autocast(device_type="cpu", enabled=False)
def cpp_rms_norm_adapter_by_expert(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias, expert_ids, scale,
                                   h_mask=None):
    """Per-token routing: expert_ids [B, L] picks one expert per token."""
    _check_x(x)
    if expert_ids.shape != x.shape[:2] or expert_ids.dtype.is_floating_point:
        raise ValueError(f"expert_ids must be an integer tensor of shape {tuple(x.shape[:2])}; "
                         f"got {expert_ids.dtype} {tuple(expert_ids.shape)}")
    acc = _accumulation_dtype(x)
    up_table = scale * up_weight.to(acc).transpose(1, 2)                               # [E, r/G, D]
    bias_table = scale * up_bias.to(acc)                                               # [E, D]
    table_index = expert_ids.reshape(-1).long()                                        # [B*L]
    return _fused(x, norm_weight, eps, down_weight, down_bias, up_table, bias_table, table_index, h_mask)


def cpp_rms_norm_adapter_folded(x, folded: FoldedAdapter, table_ids):
    """Inference only (no autograd): one kernel call, the tables built once by `fold_tables`."""
    _check_x(x)
    if torch.is_grad_enabled() and x.requires_grad:
        raise RuntimeError("rms_norm_adapter_folded is inference-only; run it under torch.no_grad()")
    batch, length, hidden = x.shape
    row_tables = table_ids if length == 1 else table_ids.repeat_interleave(length)   # [B*L]
    y, _, _ = _C.rms_norm_adapter_forward(x.reshape(-1, hidden), folded.norm_weight, folded.eps, folded.down_weight,
                                          folded.down_bias, folded.up_table, folded.bias_table, row_tables, None)
    return y.view(batch, length, hidden)


backend.register(OP_PER_SAMPLE, "cpp", cpp_rms_norm_adapter)
backend.register(OP_FOLDED, "cpp", cpp_rms_norm_adapter_folded)
backend.register(OP_PER_TOKEN, "cpp", cpp_rms_norm_adapter_by_expert)
backend.register_availability("cpp", is_available)
