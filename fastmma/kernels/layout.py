"""Which up-projection table each row uses, and the rows grouped by table.

The kernels see x as rows [M, D]. Row m uses table `table_of_row[m]` of a stack of
block-diagonal up-projections [T, D, r/G]: T = B per-sample tables (router-resolved
U_eff) or T = E expert tables (one expert per token). The row-block kernels walk
`row_order`, in which each table's rows form one segment
[segment_starts[t], segment_starts[t + 1]), so a block of rows shares one table and
per-table gradient sums need no atomics.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowLayout:
    table_of_row: torch.Tensor       # [M] int32
    row_order: torch.Tensor          # [M] int32, rows sorted by table (stable)
    segment_starts: torch.Tensor     # [T + 1] int32, offsets into row_order
    max_segment_rows: int            # an upper bound on any segment's length, known without a device sync

    @property
    def num_rows(self) -> int:
        return self.row_order.shape[0]

    @property
    def num_tables(self) -> int:
        return self.segment_starts.shape[0] - 1


def per_sample_layout(batch: int, length: int, device: torch.device) -> RowLayout:
    """Rows of sample b are b*L .. b*L + L - 1 and use table b."""
    rows = torch.arange(batch * length, dtype=torch.int32, device=device)                 # [M]
    segment_starts = torch.arange(batch + 1, dtype=torch.int32, device=device) * length    # [B + 1]
    return RowLayout(rows // length, rows, segment_starts, length)


def per_token_layout(expert_ids: torch.Tensor, experts: int) -> RowLayout:
    """Row m uses table expert_ids.flatten()[m]; ids must already lie in [0, experts)."""
    table_of_row = expert_ids.reshape(-1).to(torch.int32)                                  # [M]
    row_order = torch.argsort(table_of_row, stable=True).to(torch.int32)                   # [M]
    counts = torch.bincount(table_of_row, minlength=experts)                               # [E]
    segment_starts = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]).to(torch.int32)  # [E + 1]
    return RowLayout(table_of_row, row_order, segment_starts, table_of_row.shape[0])
