"""Forward of RMSNorm + MMA adapter over rows x [M, D].

    rstd = 1 / sqrt(mean(x^2) + eps)                     # [M] fp32, saved for backward
    n    = x * rstd * norm_weight                        # recomputed, never stored
    h_pre = A n + a = rstd * (A (norm_weight * x)) + a   # [M, r] fp32, saved (before the dropout mask)
    y    = n + U_t (h_pre * h_mask) + c_t                # t = the row's table

One program owns BLOCK_M rows of one table's segment and makes two passes over D:
the first accumulates sum(x^2) and A (norm_weight * x), the second writes y (its x
reads mostly hit L2). Rows and tables are described by a RowLayout (layout.py).
At most DECODE_MAX_ROWS rows go to the split-D decode kernels instead.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import norm_adapter_decode
from . import buffers
from .heuristics import DECODE_MAX_ROWS, adapter_dot_precision, rank_pad, segment_blocks
from .layout import RowLayout
from .tiles import load_down_tile, load_rank_tile, load_row_tile, load_up_tile, load_vector, segment_block_rows

BLOCK_M = 16
BLOCK_D = 256          # the fastest of BLOCK_M 16/32/64 x BLOCK_D 64-512 x 4/8 warps on an H100 (7B shapes, bf16)
NUM_WARPS = 4


@triton.jit
def norm_and_down_projection(x_ptr, norm_weight_ptr, down_weight_ptr, down_bias_ptr, rows, row_valid, ranks,
                             hidden, rank, eps, active, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                             RANK_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """First pass over D for a block of rows: (rstd [BLOCK_M], h_pre = A n + a [BLOCK_M, RANK_PAD])."""
    sum_squares = tl.zeros([BLOCK_M], dtype=tl.float32)
    down_acc = tl.zeros([BLOCK_M, RANK_PAD], dtype=tl.float32)       # A (norm_weight * x)
    for col_start in range(0, tl.where(active, hidden, 0), BLOCK_D):
        cols = col_start + tl.arange(0, BLOCK_D)
        x = load_row_tile(x_ptr, rows, row_valid, cols, hidden)
        norm_weight = load_vector(norm_weight_ptr, cols, hidden)
        sum_squares += tl.sum(x * x, axis=1)
        down_t = tl.trans(load_down_tile(down_weight_ptr, ranks, cols, rank, hidden))   # [BLOCK_D, RANK_PAD]
        down_acc += tl.dot(x * norm_weight[None, :], down_t, input_precision=DOT_PRECISION)
    rstd = 1.0 / tl.sqrt(sum_squares / hidden + eps)
    down_bias = load_vector(down_bias_ptr, ranks, rank)
    return rstd, down_acc * rstd[:, None] + down_bias[None, :]


@triton.jit
def adapted_tile(x_ptr, norm_weight_ptr, up_table_ptr, bias_table_ptr, rows, row_valid, rstd, h, cols, ranks,
                 hidden, rank, rank_per_group, cols_per_group, DOT_PRECISION: tl.constexpr):
    """y = n + U_t h + c_t on a [BLOCK_M, BLOCK_D] tile (fp32); h [BLOCK_M, RANK_PAD] already masked."""
    x = load_row_tile(x_ptr, rows, row_valid, cols, hidden)
    normed = x * rstd[:, None] * load_vector(norm_weight_ptr, cols, hidden)[None, :]
    up = load_up_tile(up_table_ptr, cols, ranks, hidden, rank, rank_per_group, cols_per_group)   # [BLOCK_D, RANK_PAD]
    bias = load_vector(bias_table_ptr, cols, hidden)
    return normed + tl.dot(h, tl.trans(up), input_precision=DOT_PRECISION) + bias[None, :]


@triton.jit
def _norm_adapter_forward_kernel(
        x_ptr, norm_weight_ptr, down_weight_ptr, down_bias_ptr, up_tables_ptr, bias_tables_ptr, h_mask_ptr,
        row_order_ptr, segment_starts_ptr, y_ptr, rstd_ptr, h_pre_ptr,
        hidden, rank, rank_per_group, cols_per_group, eps,
        HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
        RANK_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr):
    table = tl.program_id(0)
    segment_end = tl.load(segment_starts_ptr + table + 1)
    start = tl.load(segment_starts_ptr + table) + tl.program_id(1) * BLOCK_M
    active = start < segment_end
    rows, row_valid = segment_block_rows(row_order_ptr, start, segment_end, BLOCK_M)
    ranks = tl.arange(0, RANK_PAD)
    rstd, h_pre = norm_and_down_projection(x_ptr, norm_weight_ptr, down_weight_ptr, down_bias_ptr, rows, row_valid,
                                           ranks, hidden, rank, eps, active, BLOCK_M, BLOCK_D, RANK_PAD,
                                           DOT_PRECISION)
    tl.store(rstd_ptr + rows, rstd, mask=row_valid)
    tl.store(h_pre_ptr + rows[:, None] * rank + ranks[None, :], h_pre,
             mask=row_valid[:, None] & (ranks[None, :] < rank))
    h = h_pre
    if HAS_MASK:
        h = h * load_rank_tile(h_mask_ptr, rows, row_valid, ranks, rank)
    up_table_ptr = up_tables_ptr + table * hidden * rank_per_group
    bias_table_ptr = bias_tables_ptr + table * hidden
    for col_start in range(0, tl.where(active, hidden, 0), BLOCK_D):
        cols = col_start + tl.arange(0, BLOCK_D)
        y = adapted_tile(x_ptr, norm_weight_ptr, up_table_ptr, bias_table_ptr, rows, row_valid, rstd, h, cols,
                         ranks, hidden, rank, rank_per_group, cols_per_group, DOT_PRECISION)
        tl.store(y_ptr + rows[:, None] * hidden + cols[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=row_valid[:, None] & (cols[None, :] < hidden))


def launch_norm_adapter_forward(x, norm_weight, eps, down_weight, down_bias, up_tables, bias_tables, h_mask,
                                layout: RowLayout):
    """x [M, D], up_tables [T, D, r/G], bias_tables [T, D] (fp32), h_mask [M, r] or None; all contiguous.

    Returns (y [M, D] in x's dtype, rstd [M] fp32, h_pre [M, r] fp32).
    """
    rows, hidden = x.shape
    if rows <= DECODE_MAX_ROWS:
        return norm_adapter_decode.launch_decode_forward(x, norm_weight, eps, down_weight, down_bias, up_tables,
                                                  bias_tables, h_mask, layout)
    rank = down_weight.shape[0]
    rank_per_group = up_tables.shape[2]
    y = buffers.new_buffer((rows, hidden), x.dtype, x.device)                                # [M, D]
    rstd = buffers.new_buffer((rows,), torch.float32, x.device)                              # [M]
    h_pre = buffers.new_buffer((rows, rank), torch.float32, x.device)                        # [M, r]
    grid = (layout.num_tables, segment_blocks(layout.max_segment_rows, BLOCK_M))
    _norm_adapter_forward_kernel[grid](
        x, norm_weight, down_weight, down_bias, up_tables, bias_tables, x if h_mask is None else h_mask,
        layout.row_order, layout.segment_starts, y, rstd, h_pre,
        hidden, rank, rank_per_group, hidden // (rank // rank_per_group), eps,
        HAS_MASK=h_mask is not None, BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D, RANK_PAD=rank_pad(rank),
        DOT_PRECISION=adapter_dot_precision(x.dtype), num_warps=NUM_WARPS)
    return y, rstd, h_pre
