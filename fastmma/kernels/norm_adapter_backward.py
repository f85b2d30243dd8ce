"""Backward of RMSNorm + MMA adapter, recomputing n from x and the saved rstd.

With g = dy, t the row's table, w = norm_weight, h = h_pre * h_mask, x_hat = x * rstd and n = x_hat * w:

    dh_pre = (U_t^T g) * h_mask                     # [M, r]
    dn     = g + A^T dh_pre                          # [M, D]
    dx     = rstd * (dn * w - x_hat * mean(dn * n))  # mean over D; sum(dn * n) = g.n + dh_pre.(h_pre - a)
    dw = sum_rows dn * x_hat     dA = dh_pre^T n     da = sum_rows dh_pre
    dU_t = block-diagonal part of sum_{rows of t} g h^T     dc_t = sum_{rows of t} g

Two kernels:
    rows    (grid: table x row block)           one pass over D -> dh_pre [M, r], sum(dn * n) [M]
    columns (grid: table x row chunk x D block) dx, and per-(table, chunk) partial sums of dw, dA, dU_t, dc_t
The partial sums are reduced with torch in a fixed order: results do not change run to run.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import buffers
from .heuristics import adapter_dot_precision, rank_pad, segment_blocks, target_programs
from .layout import RowLayout
from .tiles import (adapter_input, block_diagonal_mask, load_down_tile, load_rank_tile, load_row_tile, load_up_tile,
                    load_vector, segment_block_rows)

# The fastest of the row-kernel and column-kernel block sizes tried on an H100 (7B shapes, bf16):
# rows 16/32/64 x 64/128/256, columns 16-128 x 32-128, 4 or 8 warps.
ROWS_BLOCK_M = 16
ROWS_BLOCK_D = 256
COLUMNS_BLOCK_M = 32
COLUMNS_BLOCK_D = 128
NUM_WARPS = 4


@dataclass(frozen=True)
class NormAdapterGrads:
    x: torch.Tensor | None               # [M, D], x's dtype
    norm_weight: torch.Tensor | None     # [D] fp32
    down_weight: torch.Tensor | None     # [r, D] fp32
    down_bias: torch.Tensor | None       # [r] fp32
    up_tables: torch.Tensor | None       # [T, D, r/G] fp32
    bias_tables: torch.Tensor | None     # [T, D] fp32


@triton.jit
def _backward_rows_kernel(
        x_ptr, norm_weight_ptr, grad_y_ptr, rstd_ptr, h_pre_ptr, h_mask_ptr, down_bias_ptr, up_tables_ptr,
        row_order_ptr, segment_starts_ptr, grad_h_pre_ptr, grad_n_dot_n_ptr,
        hidden, rank, rank_per_group, cols_per_group,
        HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, RANK_PAD: tl.constexpr,
        DOT_PRECISION: tl.constexpr):
    table = tl.program_id(0)
    segment_end = tl.load(segment_starts_ptr + table + 1)
    start = tl.load(segment_starts_ptr + table) + tl.program_id(1) * BLOCK_M
    rows, row_valid = segment_block_rows(row_order_ptr, start, segment_end, BLOCK_M)
    ranks = tl.arange(0, RANK_PAD)
    rstd = tl.load(rstd_ptr + rows, mask=row_valid, other=0.0)
    up_table_ptr = up_tables_ptr + table * hidden * rank_per_group
    grad_h = tl.zeros([BLOCK_M, RANK_PAD], dtype=tl.float32)         # U_t^T g
    grad_y_dot_n = tl.zeros([BLOCK_M], dtype=tl.float32)
    for col_start in range(0, tl.where(start < segment_end, hidden, 0), BLOCK_D):
        cols = col_start + tl.arange(0, BLOCK_D)
        grad_y = load_row_tile(grad_y_ptr, rows, row_valid, cols, hidden)
        normed = load_row_tile(x_ptr, rows, row_valid, cols, hidden) * rstd[:, None] \
            * load_vector(norm_weight_ptr, cols, hidden)[None, :]
        up = load_up_tile(up_table_ptr, cols, ranks, hidden, rank, rank_per_group, cols_per_group)
        grad_h += tl.dot(grad_y, up, input_precision=DOT_PRECISION)
        grad_y_dot_n += tl.sum(grad_y * normed, axis=1)
    grad_h_pre = grad_h
    if HAS_MASK:
        grad_h_pre = grad_h * load_rank_tile(h_mask_ptr, rows, row_valid, ranks, rank)
    down_bias = load_vector(down_bias_ptr, ranks, rank)
    down_of_n = load_rank_tile(h_pre_ptr, rows, row_valid, ranks, rank) - down_bias[None, :]      # A n
    tl.store(grad_h_pre_ptr + rows[:, None] * rank + ranks[None, :], grad_h_pre,
             mask=row_valid[:, None] & (ranks[None, :] < rank))
    tl.store(grad_n_dot_n_ptr + rows, grad_y_dot_n + tl.sum(grad_h_pre * down_of_n, axis=1), mask=row_valid)


@triton.jit
def _backward_columns_kernel(
        x_ptr, norm_weight_ptr, grad_y_ptr, rstd_ptr, h_pre_ptr, h_mask_ptr, grad_h_pre_ptr, grad_n_dot_n_ptr,
        down_weight_ptr, row_order_ptr, segment_starts_ptr,
        grad_x_ptr, norm_weight_partials_ptr, down_partials_ptr, up_partials_ptr, bias_partials_ptr,
        hidden, rank, rank_per_group, cols_per_group, chunk_rows,
        HAS_MASK: tl.constexpr, NEED_GRAD_X: tl.constexpr, NEED_GRAD_NORM_WEIGHT: tl.constexpr,
        NEED_ADAPTER_GRADS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, RANK_PAD: tl.constexpr,
        DOT_PRECISION: tl.constexpr):
    table = tl.program_id(0)
    partial = table * tl.num_programs(1) + tl.program_id(1)              # this program's slot in the partial sums
    chunk_start = tl.load(segment_starts_ptr + table) + tl.program_id(1) * chunk_rows
    chunk_end = tl.minimum(tl.load(segment_starts_ptr + table + 1), chunk_start + chunk_rows)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_valid = cols < hidden
    ranks = tl.arange(0, RANK_PAD)
    norm_weight = load_vector(norm_weight_ptr, cols, hidden)
    down = load_down_tile(down_weight_ptr, ranks, cols, rank, hidden)                # [RANK_PAD, BLOCK_D]
    norm_weight_acc = tl.zeros([BLOCK_D], dtype=tl.float32)                          # sum dn * x_hat
    down_acc = tl.zeros([RANK_PAD, BLOCK_D], dtype=tl.float32)                       # sum dh_pre^T n
    up_acc = tl.zeros([BLOCK_D, RANK_PAD], dtype=tl.float32)                         # sum g^T h
    bias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)                                 # sum g
    for start in range(chunk_start, chunk_end, BLOCK_M):
        rows, row_valid = segment_block_rows(row_order_ptr, start, chunk_end, BLOCK_M)
        rstd = tl.load(rstd_ptr + rows, mask=row_valid, other=0.0)
        x_hat = load_row_tile(x_ptr, rows, row_valid, cols, hidden) * rstd[:, None]
        grad_y = load_row_tile(grad_y_ptr, rows, row_valid, cols, hidden)
        grad_h_pre = load_rank_tile(grad_h_pre_ptr, rows, row_valid, ranks, rank)
        grad_n = grad_y + tl.dot(grad_h_pre, down, input_precision=DOT_PRECISION)
        if NEED_GRAD_X:
            mean_grad_n_n = tl.load(grad_n_dot_n_ptr + rows, mask=row_valid, other=0.0) / hidden
            grad_x = rstd[:, None] * (grad_n * norm_weight[None, :] - x_hat * mean_grad_n_n[:, None])
            tl.store(grad_x_ptr + rows[:, None] * hidden + cols[None, :], grad_x.to(grad_x_ptr.dtype.element_ty),
                     mask=row_valid[:, None] & col_valid[None, :])
        if NEED_GRAD_NORM_WEIGHT:
            norm_weight_acc += tl.sum(grad_n * x_hat, axis=0)
        if NEED_ADAPTER_GRADS:
            down_acc += tl.dot(tl.trans(grad_h_pre), x_hat * norm_weight[None, :], input_precision=DOT_PRECISION)
            h = adapter_input(h_pre_ptr, h_mask_ptr, rows, row_valid, ranks, rank, HAS_MASK)
            up_acc += tl.dot(tl.trans(grad_y), h, input_precision=DOT_PRECISION)
            bias_acc += tl.sum(grad_y, axis=0)
    if NEED_GRAD_NORM_WEIGHT:
        tl.store(norm_weight_partials_ptr + partial * hidden + cols, norm_weight_acc, mask=col_valid)
    if NEED_ADAPTER_GRADS:
        tl.store(down_partials_ptr + (partial * rank + ranks[:, None]) * hidden + cols[None, :], down_acc,
                 mask=(ranks[:, None] < rank) & col_valid[None, :])
        in_block = block_diagonal_mask(cols, ranks, hidden, rank, rank_per_group, cols_per_group)
        up_ptrs = (up_partials_ptr + (partial * hidden + cols[:, None]) * rank_per_group
                   + ranks[None, :] % rank_per_group)
        tl.store(up_ptrs, up_acc, mask=in_block)
        tl.store(bias_partials_ptr + partial * hidden + cols, bias_acc, mask=col_valid)


def _chunk_rows(layout: RowLayout, hidden: int, device: torch.device) -> int:
    """Rows per column-kernel program: enough programs to fill the device, few partial sums to reduce."""
    column_blocks = triton.cdiv(hidden, COLUMNS_BLOCK_D)
    wanted_chunks = max(1, target_programs(device) // (layout.num_tables * column_blocks))
    chunks = min(segment_blocks(layout.max_segment_rows, COLUMNS_BLOCK_M), wanted_chunks)
    chunk_rows = triton.cdiv(layout.max_segment_rows, chunks)
    return triton.cdiv(chunk_rows, COLUMNS_BLOCK_M) * COLUMNS_BLOCK_M


def launch_norm_adapter_backward(grad_y, x, norm_weight, down_weight, down_bias, up_tables, h_mask, rstd, h_pre,
                                 layout: RowLayout, need_grad_x: bool, need_grad_norm_weight: bool,
                                 need_adapter_grads: bool) -> NormAdapterGrads:
    """Gradients of launch_norm_adapter_forward given grad_y [M, D] (contiguous, x's dtype).

    `need_adapter_grads` covers A, a, the up tables and the bias tables together.
    """
    rows, hidden = x.shape
    rank = down_weight.shape[0]
    rank_per_group = up_tables.shape[2]
    cols_per_group = hidden // (rank // rank_per_group)
    padded_rank = rank_pad(rank)
    precision = adapter_dot_precision(x.dtype)
    has_mask = h_mask is not None
    h_mask_arg = h_mask if has_mask else x
    grad_h_pre = buffers.new_buffer((rows, rank), torch.float32, x.device)                  # [M, r]
    grad_n_dot_n = buffers.new_buffer((rows,), torch.float32, x.device)                     # [M]
    _backward_rows_kernel[(layout.num_tables, segment_blocks(layout.max_segment_rows, ROWS_BLOCK_M))](
        x, norm_weight, grad_y, rstd, h_pre, h_mask_arg, down_bias, up_tables, layout.row_order,
        layout.segment_starts, grad_h_pre, grad_n_dot_n, hidden, rank, rank_per_group, cols_per_group,
        HAS_MASK=has_mask, BLOCK_M=ROWS_BLOCK_M, BLOCK_D=ROWS_BLOCK_D, RANK_PAD=padded_rank,
        DOT_PRECISION=precision, num_warps=NUM_WARPS)

    chunk_rows = _chunk_rows(layout, hidden, x.device)
    partials = layout.num_tables * triton.cdiv(layout.max_segment_rows, chunk_rows)
    grad_x = buffers.new_buffer((rows, hidden), x.dtype, x.device) if need_grad_x else None           # [M, D]
    norm_weight_partials = None
    if need_grad_norm_weight:
        norm_weight_partials = buffers.new_buffer((partials, hidden), torch.float32, x.device)
    adapter_partials = None
    if need_adapter_grads:
        adapter_partials = (buffers.new_buffer((partials, rank, hidden), torch.float32, x.device),            # dA
                            buffers.new_buffer((partials, hidden, rank_per_group), torch.float32, x.device),  # dU_t
                            buffers.new_buffer((partials, hidden), torch.float32, x.device))                  # dc_t
    down_partials, up_partials, bias_partials = adapter_partials or (x, x, x)
    grid = (layout.num_tables, partials // layout.num_tables, triton.cdiv(hidden, COLUMNS_BLOCK_D))
    _backward_columns_kernel[grid](
        x, norm_weight, grad_y, rstd, h_pre, h_mask_arg, grad_h_pre, grad_n_dot_n, down_weight,
        layout.row_order, layout.segment_starts,
        x if grad_x is None else grad_x, x if norm_weight_partials is None else norm_weight_partials,
        down_partials, up_partials, bias_partials,
        hidden, rank, rank_per_group, cols_per_group, chunk_rows,
        HAS_MASK=has_mask, NEED_GRAD_X=need_grad_x, NEED_GRAD_NORM_WEIGHT=need_grad_norm_weight,
        NEED_ADAPTER_GRADS=need_adapter_grads, BLOCK_M=COLUMNS_BLOCK_M, BLOCK_D=COLUMNS_BLOCK_D,
        RANK_PAD=padded_rank, DOT_PRECISION=precision, num_warps=NUM_WARPS)
    return _reduce_partials(grad_x, norm_weight_partials, adapter_partials, grad_h_pre, layout.num_tables)


def _reduce_partials(grad_x, norm_weight_partials, adapter_partials, grad_h_pre, num_tables) -> NormAdapterGrads:
    grad_norm_weight = None if norm_weight_partials is None else norm_weight_partials.sum(0)         # [D]
    if adapter_partials is None:
        return NormAdapterGrads(grad_x, grad_norm_weight, None, None, None, None)
    down_partials, up_partials, bias_partials = adapter_partials
    hidden = bias_partials.shape[1]
    return NormAdapterGrads(
        x=grad_x,
        norm_weight=grad_norm_weight,
        down_weight=down_partials.sum(0),                                                            # [r, D]
        down_bias=grad_h_pre.sum(0),                                                                 # [r]
        up_tables=up_partials.reshape(num_tables, -1, hidden, up_partials.shape[2]).sum(1),          # [T, D, r/G]
        bias_tables=bias_partials.reshape(num_tables, -1, hidden).sum(1))                            # [T, D]
