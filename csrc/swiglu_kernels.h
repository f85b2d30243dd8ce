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

namespace fastmma::kernels {

using simd::Pack;
using simd::Vec;

constexpr int64_t kSwigluBlock = 512;  // elements converted to float at a time (bf16/fp16)

typedef int32_t IntPack __attribute__((vector_size(64)));
static_assert(sizeof(IntPack) == sizeof(Vec<float>), "int and float packs must have the same lane count");

// e^x for a pack of floats (Cephes expf): x = n ln2 + r, |r| <= ln2/2, e^r by a degree-7 polynomial,
// 2^n written into the exponent bits; relative error about 2 ulp. Below -87.3 it returns e^-87.3 (a
// normal float) and above 88 +inf, which is what the sigmoid needs: s = 1 / (1 + e^-g) is then 0 for
// g < -88, so silu(g) = g * s is -0 there (and NaN at g = -inf, as PyTorch's silu).
FASTMMA_INLINE Vec<float> exp_pack(Vec<float> x_in) {
  const Vec<float> high = simd::broadcast(88.0f), low = simd::broadcast(-87.33654f);
  Vec<float> x = x_in > high ? high : x_in;
  x = x < low ? low : x;
  const Vec<float> t = x * 1.44269504088896341f + 0.5f;
  IntPack n = __builtin_convertvector(t, IntPack);                       // rounds toward zero
  n += __builtin_convertvector(n, Vec<float>) > t;                       // -1 where that rounded up: floor
  const Vec<float> nf = __builtin_convertvector(n, Vec<float>);
  const Vec<float> r = x - nf * 0.693359375f + nf * 2.12194440e-4f;     // x - n ln2 in two parts
  Vec<float> p = simd::broadcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const Vec<float> e_r = p * r * r + r + 1.0f;
  const IntPack bits = (n + 127) << 23;
  Vec<float> two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  const Vec<float> result = e_r * two_n;
  return x_in > high ? simd::broadcast(__builtin_inff()) : result;
}

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

// Loads the first `count` lanes (the rest zero) and stores back only those, for the tail of a span.
FASTMMA_INLINE Vec<float> load_partial(const float* source, int64_t count) {
  float lanes[Pack<float>::kWidth] = {};
  std::memcpy(lanes, source, count * sizeof(float));
  return simd::load(lanes);
}

FASTMMA_INLINE void store_partial(float* destination, const Vec<float>& pack, int64_t count) {
  float lanes[Pack<float>::kWidth];
  simd::store(lanes, pack);
  std::memcpy(destination, lanes, count * sizeof(float));
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
