// Portable SIMD for the CPU kernels: one 64-byte pack of T, spelled with the GCC/Clang vector
// extension so that one source compiles to AVX-512, AVX2 or SSE code.
//
// Kernels marked FASTMMA_CLONES are compiled once per x86-64 ISA level and the best clone for the
// running CPU is picked when the module loads. The helpers below are inlined into each clone, so
// they run at the clone's width. (ATen's at::vec::Vectorized fixes its width at compile time from
// ATen's own build flags, which an extension does not get, so it would fall back to scalar code.)
#pragma once

#include <cstdint>
#include <cstring>

#if !defined(__GNUC__)
#error "fastmma's C++ kernels use GCC/Clang vector extensions; build them with GCC or Clang"
#endif

#if defined(__x86_64__) && !defined(__clang__)
#define FASTMMA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTMMA_CLONES
#endif

#define FASTMMA_INLINE inline __attribute__((always_inline))

// A 64-byte vector returned by value changes the ABI only for non-inlined calls; these are inlined.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastmma::simd {

template <typename T>
struct Pack {
  static constexpr int64_t kWidth = 64 / sizeof(T);
  typedef T Vec __attribute__((vector_size(64)));
};

template <typename T>
using Vec = typename Pack<T>::Vec;

template <typename T>
FASTMMA_INLINE Vec<T> load(const T* source) {
  Vec<T> pack;
  std::memcpy(&pack, source, sizeof(pack));
  return pack;
}

template <typename T>
FASTMMA_INLINE void store(T* destination, const Vec<T>& pack) {
  std::memcpy(destination, &pack, sizeof(pack));
}

template <typename T>
FASTMMA_INLINE Vec<T> broadcast(T value) {
  return Vec<T>{} + value;
}

// Sum of a pack's lanes, in lane order.
template <typename T>
FASTMMA_INLINE T fold(const Vec<T>& pack) {
  T total = 0;
  for (int64_t lane = 0; lane < Pack<T>::kWidth; ++lane) {
    total += pack[lane];
  }
  return total;
}

}  // namespace fastmma::simd
