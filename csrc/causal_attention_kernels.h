// Block kernels of the causal attention (causal_attention.cpp). A block is `rows` query positions
// [first_row, first_row + rows) of the `group` query heads that share one key/value head, stacked
// position-major: block row r is position first_row + r / group of head r % group, and sees keys
// 0 .. first_row + r / group. Row functions walk one row in a fixed order, so results do not depend on
// the thread count; the block functions are compiled once per ISA (simd.h).
#pragma once

#include <cmath>
#include <cstdint>

#include "vec_math.h"

namespace fastmma::kernels {

// Element strides of a [B, heads, L, d]-indexed tensor (any layout).
struct HeadStrides {
  int64_t batch, head, position, dim;
};

// The block's rows as floats: out[(i * group + g) * head_dim + c] = x[batch, first_head + g, first_row + i, c].
template <typename scalar_t>
FASTMMA_CLONES void gather_block(const scalar_t* x, const HeadStrides& s, int64_t batch, int64_t first_head,
                                 int64_t group, int64_t first_row, int64_t rows, int64_t head_dim, float* out) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t g = 0; g < group; ++g) {
      const scalar_t* source = x + batch * s.batch + (first_head + g) * s.head + (first_row + i) * s.position;
      float* target = out + (i * group + g) * head_dim;
      for (int64_t c = 0; c < head_dim; ++c) {
        target[c] = static_cast<float>(source[c * s.dim]);
      }
    }
  }
}

// The inverse of gather_block: block rows (floats) written into x, rounded to its dtype.
template <typename scalar_t>
FASTMMA_CLONES void scatter_block(const float* block, scalar_t* x, const HeadStrides& s, int64_t batch,
                                  int64_t first_head, int64_t group, int64_t first_row, int64_t rows,
                                  int64_t head_dim) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t g = 0; g < group; ++g) {
      scalar_t* target = x + batch * s.batch + (first_head + g) * s.head + (first_row + i) * s.position;
      const float* source = block + (i * group + g) * head_dim;
      for (int64_t c = 0; c < head_dim; ++c) {
        target[c * s.dim] = static_cast<scalar_t>(source[c]);
      }
    }
  }
}

// row[0, n) <- softmax(scale * row[0, n)), row[n, columns) <- 0; returns log sum_j e^(scale * row[j]).
FASTMMA_INLINE float causal_softmax_row(float* row, int64_t n, int64_t columns, float scale) {
  constexpr int64_t kWidth = Pack<float>::kWidth;
  const Vec<float> scales = simd::broadcast(scale);
  Vec<float> tops = simd::broadcast(-__builtin_inff());
  int64_t j = 0;
  for (; j + kWidth <= n; j += kWidth) {
    const Vec<float> scaled = simd::load(row + j) * scales;
    simd::store(row + j, scaled);
    tops = scaled > tops ? scaled : tops;
  }
  float top = -__builtin_inff();
  for (int64_t lane = 0; lane < kWidth; ++lane) {
    top = tops[lane] > top ? tops[lane] : top;
  }
  for (; j < n; ++j) {
    row[j] *= scale;
    top = row[j] > top ? row[j] : top;
  }
  const Vec<float> shift = simd::broadcast(top);
  Vec<float> sums = simd::broadcast(0.0f);
  for (j = 0; j + kWidth <= n; j += kWidth) {
    const Vec<float> e = exp_pack(simd::load(row + j) - shift);
    simd::store(row + j, e);
    sums += e;
  }
  float total = simd::fold<float>(sums);
  if (j < n) {
    float lanes[kWidth];
    simd::store(lanes, exp_pack(load_partial(row + j, n - j) - shift));
    for (int64_t lane = 0; lane < n - j; ++lane) {
      row[j + lane] = lanes[lane];
      total += lanes[lane];
    }
  }
  const Vec<float> inverse = simd::broadcast(1.0f / total);
  for (j = 0; j + kWidth <= n; j += kWidth) {
    simd::store(row + j, simd::load(row + j) * inverse);
  }
  for (; j < n; ++j) {
    row[j] *= inverse[0];
  }
  for (j = n; j < columns; ++j) {
    row[j] = 0.0f;
  }
  return top + std::log(total);
}

// row[0, n) <- exp(scale * row[0, n) - lse), row[n, columns) <- 0: the probabilities again from the kept lse.
FASTMMA_INLINE void causal_probs_row(float* row, int64_t n, int64_t columns, float scale, float lse) {
  constexpr int64_t kWidth = Pack<float>::kWidth;
  const Vec<float> shift = simd::broadcast(lse), scales = simd::broadcast(scale);
  int64_t j = 0;
  for (; j + kWidth <= n; j += kWidth) {
    simd::store(row + j, exp_pack(simd::load(row + j) * scales - shift));
  }
  if (j < n) {
    store_partial(row + j, exp_pack(load_partial(row + j, n - j) * scales - shift), n - j);
  }
  for (j = n; j < columns; ++j) {
    row[j] = 0.0f;
  }
}

// grad[j] <- scale * p[j] * (grad[j] - sum_k p[k] * grad[k]) for j < columns: the raw scores' gradient
// from the probabilities' (D = sum_k p_k dp_k stands in for flash attention's rowsum(dO * O)).
FASTMMA_INLINE void softmax_backward_row(float* grad, const float* probs, int64_t columns, float scale) {
  constexpr int64_t kWidth = Pack<float>::kWidth;
  Vec<float> sums = simd::broadcast(0.0f);
  int64_t j = 0;
  for (; j + kWidth <= columns; j += kWidth) {
    sums += simd::load(probs + j) * simd::load(grad + j);
  }
  float dot = simd::fold<float>(sums);
  for (; j < columns; ++j) {
    dot += probs[j] * grad[j];
  }
  const Vec<float> dots = simd::broadcast(dot), scales = simd::broadcast(scale);
  for (j = 0; j + kWidth <= columns; j += kWidth) {
    simd::store(grad + j, scales * simd::load(probs + j) * (simd::load(grad + j) - dots));
  }
  for (; j < columns; ++j) {
    grad[j] = scale * probs[j] * (grad[j] - dot);
  }
}

// Scores [rows * group, columns] of a block become probabilities; lse_out[r] gets row r's log-sum-exp.
FASTMMA_CLONES inline void softmax_block(float* scores, int64_t block_rows, int64_t group, int64_t first_row,
                                         int64_t columns, float scale, float* lse_out) {
  for (int64_t r = 0; r < block_rows; ++r) {
    lse_out[r] = causal_softmax_row(scores + r * columns, first_row + r / group + 1, columns, scale);
  }
}

// Scores of a block become probabilities exp(scale * s - lse[r]).
FASTMMA_CLONES inline void probs_block(float* scores, int64_t block_rows, int64_t group, int64_t first_row,
                                       int64_t columns, float scale, const float* lse) {
  for (int64_t r = 0; r < block_rows; ++r) {
    causal_probs_row(scores + r * columns, first_row + r / group + 1, columns, scale, lse[r]);
  }
}

// The probabilities' gradient of a block becomes the raw scores' gradient.
FASTMMA_CLONES inline void softmax_backward_block(float* grad, const float* probs, int64_t block_rows,
                                                  int64_t columns, float scale) {
  for (int64_t r = 0; r < block_rows; ++r) {
    softmax_backward_row(grad + r * columns, probs + r * columns, columns, scale);
  }
}

}  // namespace fastmma::kernels
