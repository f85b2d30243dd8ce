// Column kernel of the in-place softmax cross-entropy (cross_entropy.cpp): three passes over the rows
// of a vocab-major [V, C] logits chunk for a span of columns, each pass reading one contiguous piece of
// every row.
//
//   pass 1: m = max_v x[v]          pass 2: s = sum_v e^(x[v] - m)          lse = m + log s
//   pass 3: x[v] <- scale * e^(x[v] - lse), then x[target] <- scale * (e^(x[target] - lse) - 1)
//   loss = lse - x[target]
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "row_ops.h"
#include "vec_math.h"

namespace fastmma::kernels {

constexpr int64_t kCrossEntropySpan = 256;  // columns per pass; the per-column state lives on the stack

// out[k] = e^(x[k] - shift[k]) for k < n; arguments below -87.3 give 0.
FASTMMA_INLINE void exp_shifted(const float* x, const float* shift, float* out, int64_t n) {
  constexpr int64_t kWidth = Pack<float>::kWidth;
  const Vec<float> low = simd::broadcast(-87.33654f), zero = simd::broadcast(0.0f);
  int64_t k = 0;
  for (; k + kWidth <= n; k += kWidth) {
    const Vec<float> d = simd::load(x + k) - simd::load(shift + k);
    simd::store(out + k, d < low ? zero : exp_pack(d));
  }
  if (k < n) {
    const Vec<float> d = load_partial(x + k, n - k) - load_partial(shift + k, n - k);
    store_partial(out + k, d < low ? zero : exp_pack(d), n - k);
  }
}

// Columns [first, first + n) of logits [vocab, columns]; n <= kCrossEntropySpan. Writes each column's loss.
template <typename scalar_t>
FASTMMA_CLONES void cross_entropy_span(scalar_t* logits, const int64_t* targets, int64_t vocab, int64_t columns,
                                       int64_t first, int64_t n, float grad_scale, double* column_loss) {
  float row_buffer[kCrossEntropySpan], exps[kCrossEntropySpan], column_max[kCrossEntropySpan];
  float lse[kCrossEntropySpan], target_logit[kCrossEntropySpan];
  double sum_exp[kCrossEntropySpan];
  for (int64_t j = 0; j < n; ++j) {
    column_max[j] = -INFINITY;
    sum_exp[j] = 0.0;
    target_logit[j] = static_cast<float>(logits[targets[first + j] * columns + first + j]);
  }
  for (int64_t v = 0; v < vocab; ++v) {
    const float* x = rows::read_as<float>(logits + v * columns + first, row_buffer, n);
    for (int64_t j = 0; j < n; ++j) {
      column_max[j] = (x[j] > column_max[j] || x[j] != x[j]) ? x[j] : column_max[j];   // NaN spreads, as torch's
    }
  }
  for (int64_t v = 0; v < vocab; ++v) {
    const float* x = rows::read_as<float>(logits + v * columns + first, row_buffer, n);
    exp_shifted(x, column_max, exps, n);
    for (int64_t j = 0; j < n; ++j) {
      sum_exp[j] += exps[j];
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    const double lse_j = column_max[j] + std::log(sum_exp[j]);
    lse[j] = static_cast<float>(lse_j);
    column_loss[j] = lse_j - target_logit[j];
  }
  for (int64_t v = 0; v < vocab; ++v) {
    scalar_t* row = logits + v * columns + first;
    const float* x = rows::read_as<float>(row, row_buffer, n);
    float* grad = rows::compute_in<float>(row, exps);
    exp_shifted(x, lse, grad, n);
    for (int64_t j = 0; j < n; ++j) {
      grad[j] *= grad_scale;
    }
    rows::write_back(grad, row, n);
  }
  for (int64_t j = 0; j < n; ++j) {
    const float probability = std::exp(target_logit[j] - lse[j]);
    logits[targets[first + j] * columns + first + j] = static_cast<scalar_t>((probability - 1.0f) * grad_scale);
  }
}

}  // namespace fastmma::kernels
