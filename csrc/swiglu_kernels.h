// Element kernels of the fused SwiGLU product out = silu(gate) * up and its backward, over float
// values (bf16/fp16 spans are converted block by block and computed in float).
//
//   s = sigmoid(g) = 1 / (1 + e^-g)        out = g * s * u
//   d gate = dy * u * s * (1 + g * (1 - s))  d up = dy * g * s
//
// One pass reads gate and up (and dy) and writes the outputs: nothing in between touches memory.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "row_ops.h"
#include "vec_math.h"

namespace fastmma::kernels {

using simd::Pack;
using simd::Vec;

constexpr int64_t kSwigluBlock = 512;  // elements converted to float at a time (bf16/fp16)

FASTMMA_INLINE Vec<float> sigmoid_pack(const Vec<float>& g) {
  return 1.0f / (1.0f + exp_pack(-g));
}

FASTMMA_INLINE Vec<float> forward_pack(const Vec<float>& g, const Vec<float>& u) {
  return g * sigmoid_pack(g) * u;
}

FASTMMA_INLINE void backward_pack(const Vec<float>& dy, const Vec<float>& g, const Vec<float>& u,
                                  Vec<float>& grad_gate, Vec<float>& grad_up) {
  const Vec<float> s = sigmoid_pack(g);
  grad_gate = dy * u * s * (1.0f + g * (1.0f - s));
  grad_up = dy * g * s;
}

FASTMMA_INLINE void forward_floats(const float* gate, const float* up, float* out, int64_t n) {
  constexpr int64_t kWidth = Pack<float>::kWidth;
  int64_t k = 0;
  for (; k + kWidth <= n; k += kWidth) {
    simd::store(out + k, forward_pack(simd::load(gate + k), simd::load(up + k)));
  }
  if (k < n) {
    store_partial(out + k, forward_pack(load_partial(gate + k, n - k), load_partial(up + k, n - k)), n - k);
  }
}

// grad_gate or grad_up may be null (not asked for).
FASTMMA_INLINE void backward_floats(const float* grad_out, const float* gate, const float* up, float* grad_gate,
                                    float* grad_up, int64_t n) {
  constexpr int64_t kWidth = Pack<float>::kWidth;
  Vec<float> d_gate, d_up;
  int64_t k = 0;
  for (; k + kWidth <= n; k += kWidth) {
    backward_pack(simd::load(grad_out + k), simd::load(gate + k), simd::load(up + k), d_gate, d_up);
    if (grad_gate != nullptr) simd::store(grad_gate + k, d_gate);
    if (grad_up != nullptr) simd::store(grad_up + k, d_up);
  }
  if (k < n) {
    const int64_t tail = n - k;
    backward_pack(load_partial(grad_out + k, tail), load_partial(gate + k, tail), load_partial(up + k, tail),
                  d_gate, d_up);
    if (grad_gate != nullptr) store_partial(grad_gate + k, d_gate, tail);
    if (grad_up != nullptr) store_partial(grad_up + k, d_up, tail);
  }
}

// out[i] = silu(gate[i]) * up[i] for i in [begin, end).
template <typename scalar_t>
FASTMMA_CLONES void swiglu_forward_span(const scalar_t* gate, const scalar_t* up, scalar_t* out, int64_t begin,
                                        int64_t end) {
  float gate_buffer[kSwigluBlock], up_buffer[kSwigluBlock], out_buffer[kSwigluBlock];
  for (int64_t first = begin; first < end; first += kSwigluBlock) {
    const int64_t n = std::min(kSwigluBlock, end - first);
    const float* g = rows::read_as<float>(gate + first, gate_buffer, n);
    const float* u = rows::read_as<float>(up + first, up_buffer, n);
    float* o = rows::compute_in<float>(out + first, out_buffer);
    forward_floats(g, u, o, n);
    rows::write_back(o, out + first, n);
  }
}

template <typename scalar_t>
FASTMMA_CLONES void swiglu_backward_span(const scalar_t* grad_out, const scalar_t* gate, const scalar_t* up,
                                         scalar_t* grad_gate, scalar_t* grad_up, int64_t begin, int64_t end) {
  float dy_buffer[kSwigluBlock], gate_buffer[kSwigluBlock], up_buffer[kSwigluBlock];
  float grad_gate_buffer[kSwigluBlock], grad_up_buffer[kSwigluBlock];
  for (int64_t first = begin; first < end; first += kSwigluBlock) {
    const int64_t n = std::min(kSwigluBlock, end - first);
    const float* dy = rows::read_as<float>(grad_out + first, dy_buffer, n);
    const float* g = rows::read_as<float>(gate + first, gate_buffer, n);
    const float* u = rows::read_as<float>(up + first, up_buffer, n);
    float* dg = grad_gate != nullptr ? rows::compute_in<float>(grad_gate + first, grad_gate_buffer) : nullptr;
    float* du = grad_up != nullptr ? rows::compute_in<float>(grad_up + first, grad_up_buffer) : nullptr;
    backward_floats(dy, g, u, dg, du, n);
    if (dg != nullptr) rows::write_back(dg, grad_gate + first, n);
    if (du != nullptr) rows::write_back(du, grad_up + first, n);
  }
}

}  // namespace fastmma::kernels
