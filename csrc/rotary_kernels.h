// Row kernel of the rotary position embedding, forward and backward, over float values.
//
// With lo = [0, d/2) and hi = [d/2, d) of one head's vector a and its row's c = cos, s = sin:
//   forward   out_lo = a_lo c_lo - a_hi s_lo      out_hi = a_hi c_hi + a_lo s_hi
//   backward  out_lo = a_lo c_lo + a_hi s_hi      out_hi = a_hi c_hi - a_lo s_lo   (a = the gradient)
// Both are out_lo = a_lo c_lo + a_hi u,  out_hi = a_hi c_hi + a_lo v  with (u, v) = (-s_lo, s_hi) forward
// and (s_hi, -s_lo) backward, so one loop serves both.
#pragma once

#include <algorithm>
#include <cstdint>

#include "row_ops.h"
#include "simd.h"

namespace fastmma::kernels {

constexpr int64_t kRotaryMaxHeadDim = 1024;

// The (u, v) coefficients of one position: u, v [d/2] each.
FASTMMA_INLINE void rotary_coefficients(const float* sin, int64_t half, bool backward, float* u, float* v) {
  for (int64_t k = 0; k < half; ++k) {
    u[k] = backward ? sin[half + k] : -sin[k];
    v[k] = backward ? -sin[k] : sin[half + k];
  }
}

FASTMMA_INLINE void rotate_head(const float* __restrict a, const float* __restrict cos, const float* __restrict u,
                                const float* __restrict v, int64_t half, float* __restrict out) {
  for (int64_t k = 0; k < half; ++k) {
    out[k] = a[k] * cos[k] + a[half + k] * u[k];
    out[half + k] = a[half + k] * cos[half + k] + a[k] * v[k];
  }
}

// Positions [begin, end) of x [B, L, heads, d] with cos / sin [cos_batch, L, d] (cos_batch 1 or B).
template <typename scalar_t>
FASTMMA_CLONES void rotary_span(const scalar_t* x, const scalar_t* cos, const scalar_t* sin, scalar_t* out,
                                int64_t begin, int64_t end, int64_t length, bool shared_positions, int64_t heads,
                                int64_t head_dim, bool backward) {
  const int64_t half = head_dim / 2;
  float cos_row[kRotaryMaxHeadDim], sin_row[kRotaryMaxHeadDim], u[kRotaryMaxHeadDim / 2], v[kRotaryMaxHeadDim / 2];
  float head_in[kRotaryMaxHeadDim], head_out[kRotaryMaxHeadDim];
  for (int64_t position = begin; position < end; ++position) {
    const int64_t table_row = shared_positions ? position % length : position;
    const float* c = rows::read_as<float>(cos + table_row * head_dim, cos_row, head_dim);
    const float* s = rows::read_as<float>(sin + table_row * head_dim, sin_row, head_dim);
    rotary_coefficients(s, half, backward, u, v);
    for (int64_t head = 0; head < heads; ++head) {
      const int64_t offset = (position * heads + head) * head_dim;
      const float* a = rows::read_as<float>(x + offset, head_in, head_dim);
      float* o = rows::compute_in<float>(out + offset, head_out);
      rotate_head(a, c, u, v, half, o);
      rows::write_back(o, out + offset, head_dim);
    }
  }
}

}  // namespace fastmma::kernels
