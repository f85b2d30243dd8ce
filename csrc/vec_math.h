// Float-pack math shared by the CPU kernels: e^x on a pack, and loads/stores of a span's tail.
#pragma once

#include <cstdint>
#include <cstring>

#include "simd.h"

namespace fastmma::kernels {

using simd::Pack;
using simd::Vec;

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

}  // namespace fastmma::kernels
