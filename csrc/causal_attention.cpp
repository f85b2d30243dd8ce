// ATen entry points of the CPU causal attention: input checks, allocation, the block loop and its
// GEMMs. The row math is in causal_attention_kernels.h; see causal_attention.h for the layout.
#include "causal_attention.h"

#include <algorithm>
#include <string>

#include <ATen/Parallel.h>

#include "causal_attention_kernels.h"
#include "dispatch.h"
#include "outputs.h"
#include "small_gemm.h"

namespace fastmma {
namespace {

using kernels::HeadStrides;

// Query positions per block: about 96 stacked rows (positions x heads of a group), 16 to 64 positions. Smaller
// blocks waste less of the causal triangle, larger ones give longer GEMMs; at SmolLM2's shape (3 heads per
// key/value head, L = 256) 32 positions ran forward and backward 5-10% faster than 64.
int64_t block_positions(int64_t group) {
  return std::clamp<int64_t>(96 / group, 16, 64);
}

struct Geometry {
  int64_t batch, heads, kv_heads, group, length, head_dim, positions;
  float scale;

  int64_t blocks() const { return (length + positions - 1) / positions; }
  int64_t max_rows() const { return positions * group; }
};

Geometry geometry(const at::Tensor& query, const at::Tensor& key, double scale) {
  const int64_t heads = query.size(1), kv_heads = key.size(1);
  return {query.size(0), heads, kv_heads, heads / kv_heads, query.size(2), query.size(3),
          block_positions(heads / kv_heads), static_cast<float>(scale)};
}

// A float32 [B, KV, L, d]-indexed tensor whose rows (over L) are contiguous d-vectors `ld` >= d apart: the
// operand itself when it is float32 with such rows (a transposed view of [B, L, KV, d] included), else a
// contiguous float32 copy (`storage` keeps it alive).
struct FloatRows {
  at::Tensor storage;
  const float* data;
  int64_t batch_stride, head_stride, ld;

  const float* pair(const Geometry& g, int64_t pair) const {
    return data + (pair / g.kv_heads) * batch_stride + (pair % g.kv_heads) * head_stride;
  }
};

FloatRows float_rows(const at::Tensor& x) {
  const bool in_place = x.scalar_type() == at::kFloat && x.stride(3) == 1 && x.stride(2) >= x.size(3);
  const at::Tensor rows = in_place ? x : x.to(at::kFloat).contiguous();
  return {rows, rows.data_ptr<float>(), rows.stride(0), rows.stride(1), rows.stride(2)};
}

HeadStrides strides_of(const at::Tensor& x) {
  return {x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
}

// A [B, L, heads, d] tensor indexed as [B, heads, L, d].
HeadStrides position_major_strides(const at::Tensor& x) {
  return {x.stride(0), x.stride(2), x.stride(1), x.stride(3)};
}

void check_operand(const at::Tensor& tensor, const char* name, const at::Tensor& query) {
  TORCH_CHECK(tensor.device().is_cpu(), "causal attention (cpp backend): ", name, " is on ", tensor.device(),
              "; this backend runs on CPU tensors only");
  TORCH_CHECK(is_kernel_float_type(tensor.scalar_type()) && tensor.scalar_type() == query.scalar_type(),
              "causal attention (cpp backend): ", name, " has dtype ", tensor.scalar_type(), " and query ",
              query.scalar_type(), "; expected one of float32, bfloat16, float16 for all operands");
  TORCH_CHECK(tensor.dim() == 4, "causal attention (cpp backend): ", name, " must be 4-D; got ", tensor.sizes());
}

void check_operands(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value) {
  check_operand(query, "query", query);
  check_operand(key, "key", query);
  check_operand(value, "value", query);
  TORCH_CHECK(key.sizes() == value.sizes() && key.size(0) == query.size(0) && key.size(2) == query.size(2) &&
                  key.size(3) == query.size(3) && key.size(1) > 0 && query.size(1) > 0 &&
                  query.size(1) % key.size(1) == 0,
              "causal attention (cpp backend): expected query [B, H, L, d] and key / value [B, KV, L, d] with H a "
              "multiple of KV and as many keys as queries; got query ", query.sizes(), ", key ", key.sizes(),
              ", value ", value.sizes());
}

// Per-thread block buffers.
struct Scratch {
  std::vector<float> rows_a, rows_b, rows_out, scores, grad_scores, lse;

  explicit Scratch(const Geometry& g)
      : rows_a(g.max_rows() * g.head_dim), rows_b(g.max_rows() * g.head_dim), rows_out(g.max_rows() * g.head_dim),
        scores(g.max_rows() * g.length), grad_scores(g.max_rows() * g.length), lse(g.max_rows()) {}
};

// The block of `positions` rows starting at `first_row` of key/value head `kv_head` in batch `b`.
struct Block {
  int64_t b, kv_head, first_row, positions;

  int64_t rows(const Geometry& g) const { return positions * g.group; }
  int64_t keys() const { return first_row + positions; }
  int64_t first_head(const Geometry& g) const { return kv_head * g.group; }
};

Block block_at(const Geometry& g, int64_t pair, int64_t index) {
  const int64_t first_row = index * g.positions;
  return {pair / g.kv_heads, pair % g.kv_heads, first_row, std::min(g.positions, g.length - first_row)};
}

// kept lse [B, H, L] <-> the block's rows (position-major).
void copy_lse(float* lse, const Geometry& g, const Block& blk, float* rows, bool to_rows) {
  for (int64_t i = 0; i < blk.positions; ++i) {
    for (int64_t h = 0; h < g.group; ++h) {
      float& kept = lse[(blk.b * g.heads + blk.first_head(g) + h) * g.length + blk.first_row + i];
      float& row = rows[i * g.group + h];
      if (to_rows) {
        row = kept;
      } else {
        kept = row;
      }
    }
  }
}

template <typename scalar_t>
void forward_block(const Geometry& g, const Block& blk, const scalar_t* query, const HeadStrides& query_strides,
                   const float* keys, int64_t keys_ld, const float* values, int64_t values_ld, scalar_t* out,
                   const HeadStrides& out_strides, float* lse, Scratch& scratch) {
  const int64_t rows = blk.rows(g), columns = blk.keys(), d = g.head_dim;
  kernels::gather_block(query, query_strides, blk.b, blk.first_head(g), g.group, blk.first_row, blk.positions, d,
                        scratch.rows_a.data());
  float* scores = scratch.scores.data();                                                  // [rows, columns]
  gemm::gemm_rows(false, true, rows, columns, d, 1.0f, scratch.rows_a.data(), d, keys, keys_ld, 0.0f, scores,
                  columns);
  kernels::softmax_block(scores, rows, g.group, blk.first_row, columns, g.scale, scratch.lse.data());
  gemm::gemm_rows(false, false, rows, d, columns, 1.0f, scores, columns, values, values_ld, 0.0f,
                  scratch.rows_out.data(), d);
  kernels::scatter_block(scratch.rows_out.data(), out, out_strides, blk.b, blk.first_head(g), g.group, blk.first_row,
                         blk.positions, d);
  copy_lse(lse, g, blk, scratch.lse.data(), false);
}

// One block's share of the gradients: its grad_query rows, and its terms of grad_key / grad_value [L, d] floats.
// keys / values / grad_keys / grad_values: the pair's rows, ld floats apart (grad_ld for the two sums).
template <typename scalar_t>
void backward_block(const Geometry& g, const Block& blk, const scalar_t* grad_out, const HeadStrides& grad_out_strides,
                    const scalar_t* query, const HeadStrides& query_strides, const float* keys, int64_t keys_ld,
                    const float* values, int64_t values_ld, float* lse, scalar_t* grad_query,
                    const HeadStrides& grad_query_strides, float* grad_keys, float* grad_values, int64_t grad_ld,
                    Scratch& scratch) {
  const int64_t rows = blk.rows(g), columns = blk.keys(), d = g.head_dim;
  float* query_rows = scratch.rows_a.data();                                              // [rows, d]
  float* grad_rows = scratch.rows_b.data();
  kernels::gather_block(query, query_strides, blk.b, blk.first_head(g), g.group, blk.first_row, blk.positions, d,
                        query_rows);
  kernels::gather_block(grad_out, grad_out_strides, blk.b, blk.first_head(g), g.group, blk.first_row, blk.positions,
                        d, grad_rows);
  copy_lse(lse, g, blk, scratch.lse.data(), true);
  float* probs = scratch.scores.data();                                                   // [rows, columns]
  float* grad_scores = scratch.grad_scores.data();
  gemm::gemm_rows(false, true, rows, columns, d, 1.0f, query_rows, d, keys, keys_ld, 0.0f, probs, columns);
  kernels::probs_block(probs, rows, g.group, blk.first_row, columns, g.scale, scratch.lse.data());
  gemm::gemm_rows(false, true, rows, columns, d, 1.0f, grad_rows, d, values, values_ld, 0.0f, grad_scores, columns);
  gemm::gemm_rows(true, false, columns, d, rows, 1.0f, probs, columns, grad_rows, d, 1.0f, grad_values, grad_ld);
  kernels::softmax_backward_block(grad_scores, probs, rows, columns, g.scale);
  gemm::gemm_rows(false, false, rows, d, columns, 1.0f, grad_scores, columns, keys, keys_ld, 0.0f,
                  scratch.rows_out.data(), d);
  kernels::scatter_block(scratch.rows_out.data(), grad_query, grad_query_strides, blk.b, blk.first_head(g), g.group,
                         blk.first_row, blk.positions, d);
  gemm::gemm_rows(true, false, columns, d, rows, 1.0f, grad_scores, columns, query_rows, d, 1.0f, grad_keys, grad_ld);
}

}  // namespace

std::vector<at::Tensor> causal_attention_forward(const at::Tensor& query, const at::Tensor& key,
                                                 const at::Tensor& value, double scale) {
  check_operands(query, key, value);
  const Geometry g = geometry(query, key, scale);
  const FloatRows keys = float_rows(key), values = float_rows(value);
  at::Tensor out = new_output({g.batch, g.length, g.heads, g.head_dim}, query.options());       // [B, L, H, d]
  at::Tensor lse = new_output({g.batch, g.heads, g.length}, query.options().dtype(at::kFloat));  // [B, H, L]
  const int64_t pairs = g.batch * g.kv_heads;
  FASTMMA_DISPATCH_FLOAT_TYPES(query.scalar_type(), "causal_attention_forward", [&] {
    at::parallel_for(0, pairs * g.blocks(), 1, [&](int64_t begin, int64_t end) {
      Scratch scratch(g);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t pair = task / g.blocks();
        forward_block<scalar_t>(g, block_at(g, pair, task % g.blocks()), query.data_ptr<scalar_t>(),
                                strides_of(query), keys.pair(g, pair), keys.ld, values.pair(g, pair), values.ld,
                                out.data_ptr<scalar_t>(), position_major_strides(out), lse.data_ptr<float>(), scratch);
      }
    });
  });
  return {out, lse};
}

std::vector<at::Tensor> causal_attention_backward(const at::Tensor& grad_out, const at::Tensor& query,
                                                  const at::Tensor& key, const at::Tensor& value,
                                                  const at::Tensor& lse_in, double scale) {
  check_operands(query, key, value);
  check_operand(grad_out, "grad_out", query);
  const Geometry g = geometry(query, key, scale);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({g.batch, g.length, g.heads, g.head_dim}),
              "causal attention (cpp backend): grad_out must be [B, L, H, d] = [", g.batch, ", ", g.length, ", ",
              g.heads, ", ", g.head_dim, "]; got ", grad_out.sizes());
  TORCH_CHECK(lse_in.scalar_type() == at::kFloat && lse_in.sizes() == at::IntArrayRef({g.batch, g.heads, g.length}),
              "causal attention (cpp backend): lse must be float32 [B, H, L] = [", g.batch, ", ", g.heads, ", ",
              g.length, "]; got ", lse_in.scalar_type(), " ", lse_in.sizes());
  const FloatRows keys = float_rows(key), values = float_rows(value);
  at::Tensor lse = lse_in.contiguous();
  at::Tensor grad_query = new_output({g.batch, g.length, g.heads, g.head_dim}, query.options());  // [B, L, H, d]
  // float32 sums [B, L, KV, d] (the layout key and value come from: their projections' rows)
  at::Tensor grad_keys = at::zeros({g.batch, g.length, g.kv_heads, g.head_dim}, query.options().dtype(at::kFloat));
  at::Tensor grad_values = at::zeros_like(grad_keys);
  const FloatRows grad_key_rows = float_rows(grad_keys.transpose(1, 2));
  const int64_t pairs = g.batch * g.kv_heads;
  FASTMMA_DISPATCH_FLOAT_TYPES(query.scalar_type(), "causal_attention_backward", [&] {
    at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
      Scratch scratch(g);
      for (int64_t pair = begin; pair < end; ++pair) {               // one pair's blocks in order: fixed sums
        const int64_t offset = grad_key_rows.pair(g, pair) - grad_key_rows.data;
        for (int64_t index = 0; index < g.blocks(); ++index) {
          backward_block<scalar_t>(g, block_at(g, pair, index), grad_out.data_ptr<scalar_t>(),
                                   position_major_strides(grad_out), query.data_ptr<scalar_t>(), strides_of(query),
                                   keys.pair(g, pair), keys.ld, values.pair(g, pair), values.ld, lse.data_ptr<float>(),
                                   grad_query.data_ptr<scalar_t>(), position_major_strides(grad_query),
                                   grad_keys.data_ptr<float>() + offset, grad_values.data_ptr<float>() + offset,
                                   grad_key_rows.ld, scratch);
        }
      }
    });
  });
  return {grad_query.transpose(1, 2), grad_keys.transpose(1, 2).to(key.scalar_type()),
          grad_values.transpose(1, 2).to(value.scalar_type())};
}

std::string attention_gemm_backend() {
  return gemm::backend_name();
}

void force_aten_gemm(bool enabled) {
  gemm::force_aten(enabled);
}

}  // namespace fastmma
