"""out = Linear(RMSNorm + MMA adapter (x)) without writing the adapted activation y.

    out[m, :] = y[m, :] @ W^T + bias,   y = n + U_t (h_pre * h_mask) + c_t   (W: [N, D], e.g. q/k/v concatenated)

A stats pass (the norm + adapter forward kernel without its output pass) writes rstd [M]
and h_pre [M, r]. The GEMM then builds each [BLOCK_M, BLOCK_K] tile of y in its operand-load
prologue from x, rstd and h_pre, rounds it to x's dtype (the value an unfused model would
have written) and multiplies it into the [BLOCK_M, BLOCK_N] accumulator. Program blocks
follow the RowLayout segments so that every row of a block shares one up-projection table.

At most DECODE_MAX_ROWS rows: y is computed by the decode kernels and multiplied with
torch (the few rows of y cost nothing next to reading W).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import buffers
from .heuristics import DECODE_MAX_ROWS, adapter_dot_precision, interpreting, rank_pad, segment_blocks
from .layout import RowLayout
from .norm_adapter_forward import adapted_tile, launch_norm_adapter_forward
from .tiles import adapter_input, segment_block_rows

BLOCK_M = 64
BLOCK_N = 128
BLOCK_K = 64
NUM_WARPS = 8
NUM_STAGES = 3


@triton.jit
def _adapter_linear_kernel(
        x_ptr, norm_weight_ptr, up_tables_ptr, bias_tables_ptr, rstd_ptr, h_pre_ptr, h_mask_ptr,
        proj_weight_ptr, proj_bias_ptr, row_order_ptr, segment_starts_ptr, out_ptr,
        hidden, out_features, rank, rank_per_group, cols_per_group,
        HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, RANK_PAD: tl.constexpr, ADAPTER_PRECISION: tl.constexpr,
        PROJ_DOT_IN_FP32: tl.constexpr, PROJ_PRECISION: tl.constexpr):
    table = tl.program_id(0)
    segment_end = tl.load(segment_starts_ptr + table + 1)
    start = tl.load(segment_starts_ptr + table) + tl.program_id(1) * BLOCK_M
    rows, row_valid = segment_block_rows(row_order_ptr, start, segment_end, BLOCK_M)
    outs = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    out_valid = outs < out_features
    ranks = tl.arange(0, RANK_PAD)
    rstd = tl.load(rstd_ptr + rows, mask=row_valid, other=0.0)
    h = adapter_input(h_pre_ptr, h_mask_ptr, rows, row_valid, ranks, rank, HAS_MASK)      # [BLOCK_M, RANK_PAD]
    up_table_ptr = up_tables_ptr + table * hidden * rank_per_group
    bias_table_ptr = bias_tables_ptr + table * hidden
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for col_start in range(0, tl.where(start < segment_end, hidden, 0), BLOCK_K):
        cols = col_start + tl.arange(0, BLOCK_K)
        adapted = adapted_tile(x_ptr, norm_weight_ptr, up_table_ptr, bias_table_ptr, rows, row_valid, rstd, h, cols,
                               ranks, hidden, rank, rank_per_group, cols_per_group, ADAPTER_PRECISION)
        adapted = adapted.to(x_ptr.dtype.element_ty)                                    # [BLOCK_M, BLOCK_K]
        proj_t = tl.load(proj_weight_ptr + outs[None, :] * hidden + cols[:, None],       # [BLOCK_K, BLOCK_N] = W^T
                         mask=(cols[:, None] < hidden) & out_valid[None, :], other=0.0)
        if PROJ_DOT_IN_FP32:
            acc += tl.dot(adapted.to(tl.float32), proj_t.to(tl.float32), input_precision=PROJ_PRECISION)
        else:
            acc += tl.dot(adapted, proj_t)
    if HAS_BIAS:
        acc += tl.load(proj_bias_ptr + outs, mask=out_valid, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * out_features + outs[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_valid[:, None] & out_valid[None, :])


def launch_adapter_linear(x, norm_weight, eps, down_weight, down_bias, up_tables, bias_tables, h_mask,
                          layout: RowLayout, proj_weight, proj_bias):
    """x [M, D]; proj_weight [N, D], proj_bias [N] or None, in x's dtype; the rest as for the norm + adapter.

    Returns (out [M, N] in x's dtype, rstd [M] fp32, h_pre [M, r] fp32).
    """
    rows, hidden = x.shape
    if rows <= DECODE_MAX_ROWS:
        adapted, rstd, h_pre = launch_norm_adapter_forward(x, norm_weight, eps, down_weight, down_bias, up_tables,
                                                           bias_tables, h_mask, layout)            # [M, D]
        return F.linear(adapted, proj_weight, proj_bias), rstd, h_pre
    _, rstd, h_pre = launch_norm_adapter_forward(x, norm_weight, eps, down_weight, down_bias, up_tables, bias_tables,
                                                 h_mask, layout, write_y=False)
    out_features = proj_weight.shape[0]
    rank = down_weight.shape[0]
    rank_per_group = up_tables.shape[2]
    out = buffers.new_buffer((rows, out_features), x.dtype, x.device)                                  # [M, N]
    grid = (layout.num_tables, segment_blocks(layout.max_segment_rows, BLOCK_M), triton.cdiv(out_features, BLOCK_N))
    _adapter_linear_kernel[grid](
        x, norm_weight, up_tables, bias_tables, rstd, h_pre, x if h_mask is None else h_mask,
        proj_weight, x if proj_bias is None else proj_bias, layout.row_order, layout.segment_starts, out,
        hidden, out_features, rank, rank_per_group, hidden // (rank // rank_per_group),
        HAS_MASK=h_mask is not None, HAS_BIAS=proj_bias is not None, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K, RANK_PAD=rank_pad(rank), ADAPTER_PRECISION=adapter_dot_precision(x.dtype),
        PROJ_DOT_IN_FP32=interpreting() or x.dtype == torch.float32, PROJ_PRECISION="ieee",
        num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return out, rstd, h_pre
