// Row kernels of the causal softmax (causal_softmax.cpp). Each row function walks one row of n visible
// scores (then zeroes the masked tail) in a fixed order, so the results do not depend on the thread count;
// the span functions run it over rows [begin, end) of a block and are compiled once per ISA (simd.h).
#pragma once

#include <cmath>
#include <cstdint>

#include "vec_math.h"

namespace fastmma::kernels {

// row[0, n) <- exp(scale * row[0, n) - lse), row[n, columns) <- 0.
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

// grad[j] <- scale * p[j] * (grad[j] - sum_k p[k] * grad[k]) for j < columns.
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

// The number of keys row `row` of a block (query rows first_row .. first_row + block_rows - 1 of each
// head, heads stacked) sees.
FASTMMA_INLINE int64_t visible_keys(int64_t row, int64_t first_row, int64_t block_rows) {
  return first_row + row % block_rows + 1;
}

// Rows [begin, end) of scores [N, R, columns] (flattened to N * R rows); R = rows_per_batch.
template <typename T>
FASTMMA_CLONES void causal_probs_span(T* scores, const T* lse, int64_t begin, int64_t end, int64_t rows_per_batch,
                                      int64_t first_row, int64_t block_rows, int64_t columns, T scale) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = visible_keys(r % rows_per_batch, first_row, block_rows);
    causal_probs_row(scores + r * columns, n, columns, scale, lse[r]);
  }
}

template <typename T>
FASTMMA_CLONES void softmax_backward_span(T* grad, const T* probs, int64_t begin, int64_t end, int64_t columns,
                                          T scale) {
  for (int64_t r = begin; r < end; ++r) {
    softmax_backward_row(grad + r * columns, probs + r * columns, columns, scale);
  }
}

}  // namespace fastmma::kernels
