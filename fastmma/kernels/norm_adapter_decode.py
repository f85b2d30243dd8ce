"""Forward of RMSNorm + MMA adapter for decoding: at most DECODE_MAX_ROWS rows.

With a handful of rows the row-block kernel would run a few programs that each read
all of A and U. Here the work is split over D instead, so A and the tables are read
once, by many programs:

    1. partials (grid: D blocks)  sum(x^2) and A (norm_weight * x) of every row over one D block
    2. finalize (one program)     reduce the partials in a fixed order -> rstd [M], h_pre [M, r]
    3. output   (grid: D blocks)  y = n + U_t (h_pre * h_mask) + c_t, each row reading its own table

Rows are padded to ROWS_PAD = 16 (the smallest tl.dot operand); each row's table comes
from layout.table_of_row, so no sorting is needed.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import buffers
from .heuristics import DECODE_MAX_ROWS, adapter_dot_precision, rank_pad
from .layout import RowLayout
from .tiles import load_down_tile, load_row_tile, load_vector

ROWS_PAD = DECODE_MAX_ROWS
BLOCK_D = 256
NUM_WARPS = 4


@triton.jit
def _decode_partials_kernel(x_ptr, norm_weight_ptr, down_weight_ptr, sum_squares_ptr, down_partials_ptr,
                            num_rows, hidden, rank, ROWS_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
                            RANK_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr):
    block = tl.program_id(0)
    rows = tl.arange(0, ROWS_PAD).to(tl.int64)
    ranks = tl.arange(0, RANK_PAD)
    cols = block * BLOCK_D + tl.arange(0, BLOCK_D)
    x = load_row_tile(x_ptr, rows, rows < num_rows, cols, hidden)                   # [ROWS_PAD, BLOCK_D]
    weighted = x * load_vector(norm_weight_ptr, cols, hidden)[None, :]
    down_t = tl.trans(load_down_tile(down_weight_ptr, ranks, cols, rank, hidden))   # [BLOCK_D, RANK_PAD]
    down = tl.dot(weighted, down_t, input_precision=DOT_PRECISION)                 # [ROWS_PAD, RANK_PAD]
    tl.store(sum_squares_ptr + block * ROWS_PAD + rows, tl.sum(x * x, axis=1))
    tl.store(down_partials_ptr + (block * ROWS_PAD + rows[:, None]) * RANK_PAD + ranks[None, :], down)


@triton.jit
def _decode_finalize_kernel(sum_squares_ptr, down_partials_ptr, down_bias_ptr, rstd_ptr, h_pre_ptr,
                            num_blocks, num_rows, hidden, rank, eps, ROWS_PAD: tl.constexpr,
                            RANK_PAD: tl.constexpr):
    rows = tl.arange(0, ROWS_PAD)
    ranks = tl.arange(0, RANK_PAD)
    sum_squares = tl.zeros([ROWS_PAD], dtype=tl.float32)
    down = tl.zeros([ROWS_PAD, RANK_PAD], dtype=tl.float32)
    for block in range(0, num_blocks):
        sum_squares += tl.load(sum_squares_ptr + block * ROWS_PAD + rows)
        down += tl.load(down_partials_ptr + (block * ROWS_PAD + rows[:, None]) * RANK_PAD + ranks[None, :])
    rstd = 1.0 / tl.sqrt(sum_squares / hidden + eps)
    h_pre = down * rstd[:, None] + load_vector(down_bias_ptr, ranks, rank)[None, :]
    row_valid = rows < num_rows
    tl.store(rstd_ptr + rows, rstd, mask=row_valid)
    tl.store(h_pre_ptr + rows[:, None] * rank + ranks[None, :], h_pre,
             mask=row_valid[:, None] & (ranks[None, :] < rank))


@triton.jit
def _decode_output_kernel(x_ptr, norm_weight_ptr, up_tables_ptr, bias_tables_ptr, h_pre_ptr, h_mask_ptr,
                          table_of_row_ptr, rstd_ptr, y_ptr, num_rows, hidden, rank, cols_per_group,
                          HAS_MASK: tl.constexpr, RANK_PER_GROUP: tl.constexpr, ROWS_PAD: tl.constexpr,
                          BLOCK_D: tl.constexpr):
    rows = tl.arange(0, ROWS_PAD).to(tl.int64)
    row_valid = rows < num_rows
    cols = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    tile_mask = row_valid[:, None] & (cols[None, :] < hidden)
    rstd = tl.load(rstd_ptr + rows, mask=row_valid, other=0.0)
    tables = tl.load(table_of_row_ptr + rows, mask=row_valid, other=0).to(tl.int64)
    x = load_row_tile(x_ptr, rows, row_valid, cols, hidden)
    y = x * rstd[:, None] * load_vector(norm_weight_ptr, cols, hidden)[None, :]
    y += tl.load(bias_tables_ptr + tables[:, None] * hidden + cols[None, :], mask=tile_mask, other=0.0)
    first_rank = (cols // cols_per_group) * RANK_PER_GROUP                      # [BLOCK_D]: h index of k = 0
    for k in tl.static_range(RANK_PER_GROUP):
        h_index = rows[:, None] * rank + first_rank[None, :] + k
        h = tl.load(h_pre_ptr + h_index, mask=tile_mask, other=0.0)
        if HAS_MASK:
            h = h * tl.load(h_mask_ptr + h_index, mask=tile_mask, other=0.0).to(tl.float32)
        up = tl.load(up_tables_ptr + (tables[:, None] * hidden + cols[None, :]) * RANK_PER_GROUP + k,
                     mask=tile_mask, other=0.0)
        y += h * up
    tl.store(y_ptr + rows[:, None] * hidden + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=tile_mask)


def launch_decode_forward(x, norm_weight, eps, down_weight, down_bias, up_tables, bias_tables, h_mask,
                          layout: RowLayout):
    """Same contract as norm_adapter_forward.launch_norm_adapter_forward, for x [M <= DECODE_MAX_ROWS, D]."""
    rows, hidden = x.shape
    if rows > ROWS_PAD:
        raise ValueError(f"the decode kernels take at most {ROWS_PAD} rows; got {rows}")
    rank = down_weight.shape[0]
    rank_per_group = up_tables.shape[2]
    padded_rank = rank_pad(rank)
    num_blocks = triton.cdiv(hidden, BLOCK_D)
    sum_squares = buffers.new_buffer((num_blocks, ROWS_PAD), torch.float32, x.device)                # per D block
    down_partials = buffers.new_buffer((num_blocks, ROWS_PAD, padded_rank), torch.float32, x.device)
    rstd = buffers.new_buffer((rows,), torch.float32, x.device)                                      # [M]
    h_pre = buffers.new_buffer((rows, rank), torch.float32, x.device)                                # [M, r]
    y = buffers.new_buffer((rows, hidden), x.dtype, x.device)                                        # [M, D]
    _decode_partials_kernel[(num_blocks,)](
        x, norm_weight, down_weight, sum_squares, down_partials, rows, hidden, rank,
        ROWS_PAD=ROWS_PAD, BLOCK_D=BLOCK_D, RANK_PAD=padded_rank, DOT_PRECISION=adapter_dot_precision(x.dtype),
        num_warps=NUM_WARPS)
    _decode_finalize_kernel[(1,)](
        sum_squares, down_partials, down_bias, rstd, h_pre, num_blocks, rows, hidden, rank, eps,
        ROWS_PAD=ROWS_PAD, RANK_PAD=padded_rank, num_warps=NUM_WARPS)
    _decode_output_kernel[(num_blocks,)](
        x, norm_weight, up_tables, bias_tables, h_pre, x if h_mask is None else h_mask, layout.table_of_row, rstd, y,
        rows, hidden, rank, hidden // (rank // rank_per_group),
        HAS_MASK=h_mask is not None, RANK_PER_GROUP=rank_per_group, ROWS_PAD=ROWS_PAD, BLOCK_D=BLOCK_D,
        num_warps=NUM_WARPS)
    return y, rstd, h_pre
