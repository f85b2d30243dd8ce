// Row kernels of the fused RMSNorm + MMA adapter (math and layouts: norm_adapter.h).
// A kernel call handles a contiguous range of rows; the caller splits rows across threads.
//
// Rows go through in small tiles, so that each pack of A and U[t] read from cache serves every row
// of the tile (rows of one tile that share a table are handled together).
// Forward, per tile while its rows are in cache: x -> rstd -> n -> h = (A n + a) * mask -> y.
// Backward, per tile: recompute n, then
//   dh = U[t]^T dy (block-diagonal), dh_pre = dh * mask,
//   dn = dy + A^T dh_pre, dx = rstd * (dn*w - x * rstd^2 * mean(dn*w*x)),
// and add into the caller's per-chunk partial sums:
//   dA += dh_pre^T n, da += dh_pre, dU[t] += h dy (block-diagonal), dc[t] += dy, dw += dn * x * rstd.
#pragma once

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "row_ops.h"

namespace fastmma::kernels {

struct Shape {
  int64_t rows;            // M
  int64_t hidden;          // D
  int64_t rank;            // r
  int64_t groups;          // G
  int64_t rank_per_group;  // r / G
  int64_t tables;          // T
  int64_t group_width() const { return hidden / groups; }
};

template <typename scalar_t, typename acc_t>
struct Operands {
  Shape shape;
  const scalar_t* x;           // [M, D]
  const acc_t* norm_weight;    // [D]
  const acc_t* down_weight;    // [r, D]
  const acc_t* down_bias;      // [r]
  const acc_t* up_table;       // [T, r/G, D]
  const acc_t* bias_table;     // [T, D]
  const int64_t* table_index;  // [M]
  const acc_t* h_mask;         // [M, r], or null without dropout
};

template <typename scalar_t, typename acc_t>
struct ForwardOutputs {
  scalar_t* y;  // [M, D]
  acc_t* rstd;  // [M]
  acc_t* h;     // [M, r]
};

template <typename scalar_t, typename acc_t>
struct BackwardInputs {
  const scalar_t* grad_y;  // [M, D]
  const acc_t* rstd;       // [M]
  const acc_t* h;          // [M, r]
  scalar_t* grad_x;        // [M, D], or null when not asked for
  bool need_grad_normed;   // for grad_x or the norm weight's gradient
};

// One chunk's sums over its rows; null where that gradient was not asked for.
template <typename acc_t>
struct Partials {
  acc_t* norm_weight;  // [D]
  acc_t* down_weight;  // [r, D]
  acc_t* down_bias;    // [r]
  acc_t* up_table;     // [T, r/G, D]
  acc_t* bias_table;   // [T, D]
};

constexpr int64_t kForwardTileRows = 4;
constexpr int64_t kBackwardTileRows = 8;  // also the unit of the weight-gradient partial sums
constexpr int64_t kMaxTileRows = kBackwardTileRows;

// The slots of a tile sorted by table: tables in order of first appearance, each with its slots.
struct SlotsByTable {
  int64_t count = 0;                          // number of distinct tables
  int64_t table[kMaxTileRows];                // [count]
  int64_t first[kMaxTileRows + 1];            // table[e] owns slots[first[e] : first[e + 1]]
  int64_t slots[kMaxTileRows];
};

FASTMMA_INLINE SlotsByTable slots_by_table(const int64_t* tables, int64_t slot_count) {
  SlotsByTable result;
  bool taken[kMaxTileRows] = {};
  int64_t filled = 0;
  for (int64_t slot = 0; slot < slot_count; ++slot) {
    if (taken[slot]) {
      continue;
    }
    result.table[result.count] = tables[slot];
    result.first[result.count] = filled;
    for (int64_t other = slot; other < slot_count; ++other) {
      if (!taken[other] && tables[other] == tables[slot]) {
        taken[other] = true;
        result.slots[filled++] = other;
      }
    }
    ++result.count;
  }
  result.first[result.count] = filled;
  return result;
}

// Pointers to the r/G rows of up_table[table] that feed group `group`, each offset to that group's columns.
template <typename acc_t>
FASTMMA_INLINE void up_rows(const acc_t* up_table, const Shape& shape, int64_t table, int64_t group,
                            const acc_t** out) {
  const acc_t* first = up_table + table * shape.rank_per_group * shape.hidden + group * shape.group_width();
  for (int64_t j = 0; j < shape.rank_per_group; ++j) {
    out[j] = first + j * shape.hidden;
  }
}

template <typename acc_t>
std::vector<const acc_t*> down_rows(const acc_t* down_weight, const Shape& shape) {
  std::vector<const acc_t*> rows(shape.rank);
  for (int64_t j = 0; j < shape.rank; ++j) {
    rows[j] = down_weight + j * shape.hidden;
  }
  return rows;
}

// pointers[i] = rows[slots[i]] + offset for i < count
template <typename Pointer>
FASTMMA_INLINE void gather(Pointer const* rows, const int64_t* slots, int64_t count, int64_t offset,
                           Pointer* pointers) {
  for (int64_t i = 0; i < count; ++i) {
    pointers[i] = rows[slots[i]] + offset;
  }
}

template <typename acc_t>
FASTMMA_INLINE acc_t inverse_rms(const acc_t* x, int64_t hidden, acc_t eps) {
  return acc_t(1) / std::sqrt(rows::dot(x, x, hidden) / static_cast<acc_t>(hidden) + eps);
}

// ---------------------------------------------------------------------------------------------
// Forward

template <typename acc_t>
struct ForwardScratch {
  ForwardScratch(const Shape& shape, bool converts)
      : x(converts ? shape.hidden : 0),
        normed(kForwardTileRows * shape.hidden),
        y(converts ? kForwardTileRows * shape.hidden : 0),
        up(shape.rank_per_group) {}
  std::vector<acc_t> x;          // [D]: the current row, converted (empty when x is acc_t)
  std::vector<acc_t> normed, y;  // [tile, D]: n, and y before conversion (empty when y is acc_t)
  std::vector<const acc_t*> up;  // [r/G]
  acc_t* normed_rows[kForwardTileRows];
  acc_t* h_rows[kForwardTileRows];
  acc_t* y_rows[kForwardTileRows];
  int64_t tables[kForwardTileRows];
};

// h = (A n + a) * mask for the tile's rows.
template <typename scalar_t, typename acc_t>
FASTMMA_INLINE void down_project(const Operands<scalar_t, acc_t>& in, const std::vector<const acc_t*>& down,
                                 int64_t first_row, int64_t count, ForwardScratch<acc_t>& scratch) {
  const int64_t rank = in.shape.rank;
  rows::dot_grid(scratch.normed_rows, count, down.data(), rank, in.shape.hidden, scratch.h_rows);
  for (int64_t slot = 0; slot < count; ++slot) {
    acc_t* h = scratch.h_rows[slot];
    for (int64_t j = 0; j < rank; ++j) {
      h[j] += in.down_bias[j];
      if (in.h_mask != nullptr) {
        h[j] *= in.h_mask[(first_row + slot) * rank + j];
      }
    }
  }
}

// y = n + c[t] + U[t] h for the tile's rows, table by table and group by group.
template <typename scalar_t, typename acc_t>
FASTMMA_INLINE void up_project(const Operands<scalar_t, acc_t>& in, int64_t count, ForwardScratch<acc_t>& scratch) {
  const Shape& shape = in.shape;
  const int64_t width = shape.group_width();
  const SlotsByTable by_table = slots_by_table(scratch.tables, count);
  acc_t* y[kForwardTileRows];
  const acc_t* normed[kForwardTileRows];
  const acc_t* h[kForwardTileRows];
  for (int64_t entry = 0; entry < by_table.count; ++entry) {
    const int64_t* slots = by_table.slots + by_table.first[entry];
    const int64_t table_rows = by_table.first[entry + 1] - by_table.first[entry];
    for (int64_t group = 0; group < shape.groups; ++group) {
      gather(scratch.y_rows, slots, table_rows, group * width, y);
      gather<const acc_t*>(scratch.normed_rows, slots, table_rows, group * width, normed);
      gather<const acc_t*>(scratch.h_rows, slots, table_rows, group * shape.rank_per_group, h);
      up_rows(in.up_table, shape, by_table.table[entry], group, scratch.up.data());
      const acc_t* bias = in.bias_table + by_table.table[entry] * shape.hidden + group * width;
      rows::combine_rows<acc_t>(y, normed, table_rows, bias, scratch.up.data(), shape.rank_per_group, h, width);
    }
  }
}

template <typename scalar_t, typename acc_t>
FASTMMA_INLINE void forward_tile(const Operands<scalar_t, acc_t>& in, acc_t eps,
                                 const ForwardOutputs<scalar_t, acc_t>& out, const std::vector<const acc_t*>& down,
                                 int64_t first_row, int64_t count, int64_t end, ForwardScratch<acc_t>& scratch) {
  const int64_t hidden = in.shape.hidden;
  for (int64_t slot = 0; slot < count; ++slot) {
    const int64_t row = first_row + slot;
    if (row + 1 < end) {
      rows::prefetch(in.x + (row + 1) * hidden, hidden);
    }
    const acc_t* x = rows::read_as(in.x + row * hidden, scratch.x.data(), hidden);
    const acc_t rstd = inverse_rms(x, hidden, eps);
    out.rstd[row] = rstd;
    scratch.normed_rows[slot] = scratch.normed.data() + slot * hidden;
    rows::normalize(x, in.norm_weight, rstd, scratch.normed_rows[slot], hidden);
    scratch.h_rows[slot] = out.h + row * in.shape.rank;
    scratch.y_rows[slot] = rows::compute_in(out.y + row * hidden, scratch.y.data() + slot * hidden);
    scratch.tables[slot] = in.table_index[row];
  }
  down_project(in, down, first_row, count, scratch);
  up_project(in, count, scratch);
  for (int64_t slot = 0; slot < count; ++slot) {
    rows::write_back(scratch.y_rows[slot], out.y + (first_row + slot) * hidden, hidden);
  }
}

template <typename scalar_t, typename acc_t>
FASTMMA_CLONES void forward_rows(const Operands<scalar_t, acc_t>& in, acc_t eps,
                                 const ForwardOutputs<scalar_t, acc_t>& out, int64_t begin, int64_t end) {
  ForwardScratch<acc_t> scratch(in.shape, !std::is_same_v<scalar_t, acc_t>);
  const std::vector<const acc_t*> down = down_rows(in.down_weight, in.shape);
  for (int64_t first = begin; first < end; first += kForwardTileRows) {
    forward_tile(in, eps, out, down, first, std::min(kForwardTileRows, end - first), end, scratch);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward

template <typename acc_t>
struct BackwardScratch {
  BackwardScratch(const Shape& shape, bool converts)
      : x(converts ? kBackwardTileRows * shape.hidden : 0),
        grad_y(converts ? kBackwardTileRows * shape.hidden : 0),
        normed(kBackwardTileRows * shape.hidden),
        grad_normed(kBackwardTileRows * shape.hidden),
        grad_h_pre(kBackwardTileRows * shape.rank),
        up(shape.rank_per_group) {}
  std::vector<acc_t> x, grad_y;        // [tile, D]: converted copies (empty when x is acc_t)
  std::vector<acc_t> normed;           // [tile, D]: n, for dA
  std::vector<acc_t> grad_normed;      // [tile, D]: dn, then dn * w
  std::vector<acc_t> grad_h_pre;       // [tile, r]: dh * mask
  std::vector<const acc_t*> up;        // [r/G]
  const acc_t* x_rows[kBackwardTileRows];
  const acc_t* grad_y_rows[kBackwardTileRows];
  const acc_t* normed_rows[kBackwardTileRows];
  acc_t* grad_normed_rows[kBackwardTileRows];
  acc_t* grad_h_pre_rows[kBackwardTileRows];
  int64_t tables[kBackwardTileRows];
};

// Reads the tile's x and dy (converted when needed) and recomputes n when dA needs it.
template <typename scalar_t, typename acc_t>
FASTMMA_INLINE void load_tile(const Operands<scalar_t, acc_t>& in, const BackwardInputs<scalar_t, acc_t>& bw,
                              bool need_normed, int64_t first_row, int64_t count, int64_t end,
                              BackwardScratch<acc_t>& scratch) {
  const int64_t hidden = in.shape.hidden;
  for (int64_t slot = 0; slot < count; ++slot) {
    const int64_t row = first_row + slot;
    if (row + 1 < end) {
      rows::prefetch(in.x + (row + 1) * hidden, hidden);
      rows::prefetch(bw.grad_y + (row + 1) * hidden, hidden);
    }
    scratch.x_rows[slot] = rows::read_as(in.x + row * hidden, scratch.x.data() + slot * hidden, hidden);
    scratch.grad_y_rows[slot] = rows::read_as(bw.grad_y + row * hidden, scratch.grad_y.data() + slot * hidden, hidden);
    scratch.grad_normed_rows[slot] = scratch.grad_normed.data() + slot * hidden;
    scratch.grad_h_pre_rows[slot] = scratch.grad_h_pre.data() + slot * in.shape.rank;
    scratch.tables[slot] = in.table_index[row];
    if (need_normed) {
      acc_t* normed = scratch.normed.data() + slot * hidden;
      rows::normalize(scratch.x_rows[slot], in.norm_weight, bw.rstd[row], normed, hidden);
      scratch.normed_rows[slot] = normed;
    }
  }
}

// grad_h_pre = (U[t]^T dy) * mask for the tile's rows, table by table and group by group.
template <typename scalar_t, typename acc_t>
FASTMMA_INLINE void grad_down_output(const Operands<scalar_t, acc_t>& in, int64_t first_row, int64_t count,
                                     BackwardScratch<acc_t>& scratch) {
  const Shape& shape = in.shape;
  const int64_t width = shape.group_width();
  const SlotsByTable by_table = slots_by_table(scratch.tables, count);
  const acc_t* grad_y[kBackwardTileRows];
  acc_t* grad_h[kBackwardTileRows];
  for (int64_t entry = 0; entry < by_table.count; ++entry) {
    const int64_t* slots = by_table.slots + by_table.first[entry];
    const int64_t table_rows = by_table.first[entry + 1] - by_table.first[entry];
    for (int64_t group = 0; group < shape.groups; ++group) {
      gather(scratch.grad_y_rows, slots, table_rows, group * width, grad_y);
      gather(scratch.grad_h_pre_rows, slots, table_rows, group * shape.rank_per_group, grad_h);
      up_rows(in.up_table, shape, by_table.table[entry], group, scratch.up.data());
      rows::dot_grid(grad_y, table_rows, scratch.up.data(), shape.rank_per_group, width, grad_h);
    }
  }
  if (in.h_mask != nullptr) {
    for (int64_t slot = 0; slot < count; ++slot) {
      for (int64_t j = 0; j < shape.rank; ++j) {
        scratch.grad_h_pre_rows[slot][j] *= in.h_mask[(first_row + slot) * shape.rank + j];
      }
    }
  }
}

// grad_x = rstd * g - x * rstd^3 * (g . x) / D with g = dn * w, written in x's dtype.
template <typename scalar_t, typename acc_t>
FASTMMA_INLINE void rms_norm_input_grad(acc_t* __restrict grad_normed, const acc_t* __restrict weight,
                                        const acc_t* __restrict x, acc_t rstd, int64_t hidden,
                                        scalar_t* __restrict grad_x) {
  for (int64_t k = 0; k < hidden; ++k) {
    grad_normed[k] *= weight[k];
  }
  const acc_t x_coef = rstd * rstd * rstd * rows::dot(grad_normed, x, hidden) / static_cast<acc_t>(hidden);
  for (int64_t k = 0; k < hidden; ++k) {
    grad_x[k] = static_cast<scalar_t>(rstd * grad_normed[k] - x_coef * x[k]);
  }
}

// dn = dy + A^T dh_pre for the tile's rows; then the norm weight's partial and grad_x, row by row.
template <typename scalar_t, typename acc_t>
FASTMMA_INLINE void grad_through_norm(const Operands<scalar_t, acc_t>& in, const BackwardInputs<scalar_t, acc_t>& bw,
                                      const std::vector<const acc_t*>& down, int64_t first_row, int64_t count,
                                      acc_t* grad_norm_weight, BackwardScratch<acc_t>& scratch) {
  const int64_t hidden = in.shape.hidden;
  rows::combine_rows<acc_t>(scratch.grad_normed_rows, scratch.grad_y_rows, count, nullptr, down.data(),
                            in.shape.rank, scratch.grad_h_pre_rows, hidden);
  for (int64_t slot = 0; slot < count; ++slot) {
    const int64_t row = first_row + slot;
    const acc_t rstd = bw.rstd[row];
    const acc_t* x = scratch.x_rows[slot];
    acc_t* grad_normed = scratch.grad_normed_rows[slot];
    if (grad_norm_weight != nullptr) {
      for (int64_t k = 0; k < hidden; ++k) {
        grad_norm_weight[k] += grad_normed[k] * (x[k] * rstd);
      }
    }
    if (bw.grad_x != nullptr) {
      rms_norm_input_grad(grad_normed, in.norm_weight, x, rstd, hidden, bw.grad_x + row * hidden);
    }
  }
}

// dA += sum_i dh_pre[i] n[i]^T, da += sum_i dh_pre[i] over the tile's rows.
template <typename acc_t>
FASTMMA_INLINE void add_down_grads(const Shape& shape, int64_t count, const BackwardScratch<acc_t>& scratch,
                                   const Partials<acc_t>& partials) {
  acc_t coefs[kBackwardTileRows];
  for (int64_t j = 0; j < shape.rank; ++j) {
    for (int64_t slot = 0; slot < count; ++slot) {
      coefs[slot] = scratch.grad_h_pre_rows[slot][j];
      partials.down_bias[j] += coefs[slot];
    }
    rows::add_scaled_rows(partials.down_weight + j * shape.hidden, scratch.normed_rows, coefs, count,
                          shape.hidden);
  }
}

// dc[t] += sum_i dy[i] and dU[t] += sum_i h[i] dy[i] (block-diagonal) over the tile's rows, table by table.
template <typename acc_t>
FASTMMA_INLINE void add_table_grads(const Shape& shape, const acc_t* h, int64_t first_row, int64_t count,
                                    const BackwardScratch<acc_t>& scratch, const Partials<acc_t>& partials) {
  const int64_t width = shape.group_width();
  const int64_t per_group = shape.rank_per_group;
  acc_t ones[kBackwardTileRows];
  std::fill(ones, ones + kBackwardTileRows, acc_t(1));
  const SlotsByTable by_table = slots_by_table(scratch.tables, count);
  const acc_t* grad_y[kBackwardTileRows];
  acc_t coefs[kBackwardTileRows];
  for (int64_t entry = 0; entry < by_table.count; ++entry) {
    const int64_t table = by_table.table[entry];
    const int64_t* slots = by_table.slots + by_table.first[entry];
    const int64_t table_rows = by_table.first[entry + 1] - by_table.first[entry];
    gather(scratch.grad_y_rows, slots, table_rows, 0, grad_y);
    rows::add_scaled_rows(partials.bias_table + table * shape.hidden, grad_y, ones, table_rows, shape.hidden);
    for (int64_t group = 0; group < shape.groups; ++group) {
      gather(scratch.grad_y_rows, slots, table_rows, group * width, grad_y);
      for (int64_t j = 0; j < per_group; ++j) {
        for (int64_t i = 0; i < table_rows; ++i) {
          coefs[i] = h[(first_row + slots[i]) * shape.rank + group * per_group + j];
        }
        acc_t* target = partials.up_table + (table * per_group + j) * shape.hidden + group * width;
        rows::add_scaled_rows(target, grad_y, coefs, table_rows, width);
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
FASTMMA_CLONES void backward_rows(const Operands<scalar_t, acc_t>& in, const BackwardInputs<scalar_t, acc_t>& bw,
                                  const Partials<acc_t>& partials, int64_t begin, int64_t end) {
  BackwardScratch<acc_t> scratch(in.shape, !std::is_same_v<scalar_t, acc_t>);
  const std::vector<const acc_t*> down = down_rows(in.down_weight, in.shape);
  const bool need_down = partials.down_weight != nullptr;
  for (int64_t first = begin; first < end; first += kBackwardTileRows) {
    const int64_t count = std::min(kBackwardTileRows, end - first);
    load_tile(in, bw, need_down, first, count, end, scratch);
    if (need_down || bw.need_grad_normed) {
      grad_down_output(in, first, count, scratch);
    }
    if (bw.need_grad_normed) {
      grad_through_norm(in, bw, down, first, count, partials.norm_weight, scratch);
    }
    if (need_down) {
      add_down_grads(in.shape, count, scratch, partials);
    }
    if (partials.up_table != nullptr) {
      add_table_grads(in.shape, bw.h, first, count, scratch, partials);
    }
  }
}

}  // namespace fastmma::kernels
