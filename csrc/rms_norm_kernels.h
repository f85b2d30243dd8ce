// Row kernel of the RMSNorm input gradient (rms_norm.cpp): two sweeps over a row (the dot, then the
// output) in a fixed order, so results do not depend on the thread count.
#pragma once

#include <cstdint>

#include "row_ops.h"

namespace fastmma::kernels {

// v rounded to scalar_t and back (autograd's product of two scalar_t tensors), nothing for float.
template <typename scalar_t>
FASTMMA_INLINE float rounded(float v) {
  return static_cast<float>(static_cast<scalar_t>(v));
}

// Rows [begin, end) of [rows, d]; scaled_grad and normed are per-thread scratch rows of d floats.
template <typename scalar_t>
FASTMMA_CLONES void rms_norm_input_grad_rows(const scalar_t* grad_y, const scalar_t* x, const scalar_t* weight,
                                             const float* rstd, scalar_t* grad_x, int64_t begin, int64_t end,
                                             int64_t d, float* scaled_grad, float* normed) {
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* grad_row = grad_y + r * d;
    const scalar_t* x_row = x + r * d;
    const float s = rstd[r];
    for (int64_t j = 0; j < d; ++j) {
      scaled_grad[j] = rounded<scalar_t>(static_cast<float>(grad_row[j]) * static_cast<float>(weight[j]));
      normed[j] = static_cast<float>(x_row[j]) * s;
    }
    const float mean = rows::dot(scaled_grad, normed, d) / static_cast<float>(d);
    scalar_t* out = grad_x + r * d;
    for (int64_t j = 0; j < d; ++j) {
      out[j] = static_cast<scalar_t>(s * (scaled_grad[j] - normed[j] * mean));
    }
  }
}

}  // namespace fastmma::kernels
