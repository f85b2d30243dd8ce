"""Tile loads shared by the norm + adapter kernels (all return fp32).

Conventions: `rows` are int64 row indices of a [M, D] (or [M, r]) row-major tensor,
`cols` are hidden-channel indices, `ranks` = tl.arange(0, RANK_PAD) index the adapter
rank padded to a power of two >= 16 (the smallest tl.dot operand).
"""
import triton
import triton.language as tl


@triton.jit
def segment_block_rows(row_order_ptr, start, end, BLOCK_M: tl.constexpr):
    """Rows row_order[start : start + BLOCK_M] clipped at `end`: (rows [BLOCK_M] int64, valid [BLOCK_M])."""
    positions = start + tl.arange(0, BLOCK_M)
    valid = positions < end
    rows = tl.load(row_order_ptr + positions, mask=valid, other=0).to(tl.int64)
    return rows, valid


@triton.jit
def load_row_tile(ptr, rows, row_valid, cols, width):
    """[len(rows), len(cols)] tile of a row-major [M, width] tensor; zeros outside."""
    mask = row_valid[:, None] & (cols[None, :] < width)
    return tl.load(ptr + rows[:, None] * width + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def load_vector(ptr, index, size):
    return tl.load(ptr + index, mask=index < size, other=0.0).to(tl.float32)


@triton.jit
def load_rank_tile(ptr, rows, row_valid, ranks, rank):
    """[len(rows), RANK_PAD] tile of a row-major [M, r] tensor; zeros in the padding."""
    mask = row_valid[:, None] & (ranks[None, :] < rank)
    return tl.load(ptr + rows[:, None] * rank + ranks[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def load_down_tile(down_weight_ptr, ranks, cols, rank, hidden):
    """A[ranks, cols] as a [RANK_PAD, BLOCK_D] tile of the down-projection A [r, D]."""
    mask = (ranks[:, None] < rank) & (cols[None, :] < hidden)
    return tl.load(down_weight_ptr + ranks[:, None] * hidden + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def block_diagonal_mask(cols, ranks, hidden, rank, rank_per_group, cols_per_group):
    """[BLOCK_D, RANK_PAD]: True where output channel d reads rank j (same group, both in range)."""
    same_group = (ranks[None, :] // rank_per_group) == (cols[:, None] // cols_per_group)
    return same_group & (cols[:, None] < hidden) & (ranks[None, :] < rank)


@triton.jit
def load_up_tile(table_ptr, cols, ranks, hidden, rank, rank_per_group, cols_per_group):
    """Dense [BLOCK_D, RANK_PAD] view of one compact block-diagonal table [D, r/G]:
    element (d, j) = table[d, j % (r/G)] when j is in d's group, else 0."""
    mask = block_diagonal_mask(cols, ranks, hidden, rank, rank_per_group, cols_per_group)
    ptrs = table_ptr + cols[:, None] * rank_per_group + ranks[None, :] % rank_per_group
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def adapter_input(h_pre_ptr, h_mask_ptr, rows, row_valid, ranks, rank, HAS_MASK: tl.constexpr):
    """h = (A n + a) * h_mask for a block of rows: [BLOCK_M, RANK_PAD] fp32."""
    h = load_rank_tile(h_pre_ptr, rows, row_valid, ranks, rank)
    if HAS_MASK:
        h = h * load_rank_tile(h_mask_ptr, rows, row_valid, ranks, rank)
    return h
