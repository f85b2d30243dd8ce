// Row kernels of the few-rows Linear (few_rows_linear.cpp), over float rows: weight rows of other
// dtypes are converted a block at a time. Reductions run in a fixed order whatever the thread count:
// forward threads split the output features, backward threads split the input features.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "row_ops.h"

namespace fastmma::kernels {

constexpr int64_t kMaxFewRows = 8;
constexpr int64_t kWeightRowsPerBlock = 4;
constexpr int64_t kBackwardSegment = 1024;   // input features accumulated at a time, per row of x

// y[m][n] = x[m] . weight[n] + bias[n] for n in [n_begin, n_end); x: `rows` float rows of length k.
template <typename scalar_t>
FASTMMA_CLONES void few_rows_forward_span(const float* x, int64_t rows, const scalar_t* weight, const scalar_t* bias,
                                          scalar_t* y, int64_t k, int64_t n_count, int64_t n_begin, int64_t n_end) {
  std::vector<float> weight_buffer(std::is_same_v<scalar_t, float> ? 0 : kWeightRowsPerBlock * k);
  const float* x_rows[kMaxFewRows];
  for (int64_t m = 0; m < rows; ++m) {
    x_rows[m] = x + m * k;
  }
  for (int64_t n = n_begin; n < n_end; n += kWeightRowsPerBlock) {
    const int64_t block = std::min(kWeightRowsPerBlock, n_end - n);
    const float* weight_rows[kWeightRowsPerBlock];
    for (int64_t j = 0; j < block; ++j) {
      weight_rows[j] = rows::read_as<float>(weight + (n + j) * k, weight_buffer.data() + j * k, k);
    }
    float sums[kMaxFewRows][kWeightRowsPerBlock];
    float* sum_rows[kMaxFewRows];
    for (int64_t m = 0; m < rows; ++m) {
      sum_rows[m] = sums[m];
    }
    rows::dot_grid<float>(x_rows, rows, weight_rows, block, k, sum_rows);
    for (int64_t m = 0; m < rows; ++m) {
      for (int64_t j = 0; j < block; ++j) {
        const float bias_value = bias == nullptr ? 0.0f : static_cast<float>(bias[n + j]);
        y[m * n_count + n + j] = static_cast<scalar_t>(sums[m][j] + bias_value);
      }
    }
  }
}

// acc[m][0:width] += sum_j coefs[m][j] * sources[j][0:width] for every row m < rows.
template <int kSources>
FASTMMA_INLINE void accumulate_rows(float* const* acc, int64_t rows, const float* const* sources,
                                    const float* const* coefs, int64_t width) {
  int64_t m = 0;
  for (; m + 4 <= rows; m += 4) {
    rows::combine_block<float, 4, kSources, false>(acc + m, acc + m, nullptr, sources, coefs + m, width);
  }
  for (; m < rows; ++m) {
    rows::combine_block<float, 1, kSources, false>(acc + m, acc + m, nullptr, sources, coefs + m, width);
  }
}

// grad_x[m][c] = sum_n grad_y[m][n] * weight[n][c] for c in [c_begin, c_end); grad_y: `rows` float rows of
// length n_count.
template <typename scalar_t>
FASTMMA_CLONES void few_rows_backward_span(const float* grad_y, int64_t rows, const scalar_t* weight, scalar_t* grad_x,
                                           int64_t k, int64_t n_count, int64_t c_begin, int64_t c_end) {
  std::vector<float> acc(rows * kBackwardSegment);
  std::vector<float> weight_buffer(std::is_same_v<scalar_t, float> ? 0 : kWeightRowsPerBlock * kBackwardSegment);
  for (int64_t c = c_begin; c < c_end; c += kBackwardSegment) {
    const int64_t width = std::min(kBackwardSegment, c_end - c);
    std::fill(acc.begin(), acc.end(), 0.0f);
    float* acc_rows[kMaxFewRows];
    for (int64_t m = 0; m < rows; ++m) {
      acc_rows[m] = acc.data() + m * kBackwardSegment;
    }
    for (int64_t n = 0; n < n_count; n += kWeightRowsPerBlock) {
      const int64_t block = std::min(kWeightRowsPerBlock, n_count - n);
      const float* sources[kWeightRowsPerBlock];
      for (int64_t j = 0; j < block; ++j) {
        sources[j] = rows::read_as<float>(weight + (n + j) * k + c, weight_buffer.data() + j * kBackwardSegment, width);
      }
      const float* coefs[kMaxFewRows];
      for (int64_t m = 0; m < rows; ++m) {
        coefs[m] = grad_y + m * n_count + n;
      }
      if (block == kWeightRowsPerBlock) {
        accumulate_rows<kWeightRowsPerBlock>(acc_rows, rows, sources, coefs, width);
      } else {
        for (int64_t j = 0; j < block; ++j) {
          const float* coef_j[kMaxFewRows];
          for (int64_t m = 0; m < rows; ++m) {
            coef_j[m] = coefs[m] + j;
          }
          accumulate_rows<1>(acc_rows, rows, sources + j, coef_j, width);
        }
      }
    }
    for (int64_t m = 0; m < rows; ++m) {
      rows::convert(acc_rows[m], grad_x + m * k + c, width);
    }
  }
}

}  // namespace fastmma::kernels
