// Row primitives of the fused kernels. Each walks one or a few contiguous rows of length n and
// is inlined into an ISA clone (see simd.h). Every reduction runs in a fixed order, so a kernel
// built from them gives the same bits on every run.
#pragma once

#include <cstdint>
#include <type_traits>

#include <c10/util/BFloat16.h>

#include "simd.h"

namespace fastmma::rows {

using simd::Pack;
using simd::Vec;

// sum_k a[k] * b[k], with four independent pack accumulators.
template <typename T>
FASTMMA_INLINE T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  constexpr int64_t kWidth = Pack<T>::kWidth;
  Vec<T> sums[4] = {};
  int64_t k = 0;
  for (; k + 4 * kWidth <= n; k += 4 * kWidth) {
    for (int part = 0; part < 4; ++part) {
      sums[part] += simd::load(a + k + part * kWidth) * simd::load(b + k + part * kWidth);
    }
  }
  for (; k + kWidth <= n; k += kWidth) {
    sums[0] += simd::load(a + k) * simd::load(b + k);
  }
  T total = simd::fold<T>((sums[0] + sums[1]) + (sums[2] + sums[3]));
  for (; k < n; ++k) {
    total += a[k] * b[k];
  }
  return total;
}

// out[i][j] = sum_k a[i][k] * b[j][k] for a kA x kB block: each pack of a and b is loaded once.
template <typename T, int kA, int kB>
FASTMMA_INLINE void dot_block(const T* const* a, const T* const* b, int64_t n, T* const* out) {
  constexpr int64_t kWidth = Pack<T>::kWidth;
  Vec<T> sums[kA][kB] = {};
  int64_t k = 0;
  for (; k + kWidth <= n; k += kWidth) {
    Vec<T> b_packs[kB];
    for (int j = 0; j < kB; ++j) {
      b_packs[j] = simd::load(b[j] + k);
    }
    for (int i = 0; i < kA; ++i) {
      const Vec<T> a_pack = simd::load(a[i] + k);
      for (int j = 0; j < kB; ++j) {
        sums[i][j] += a_pack * b_packs[j];
      }
    }
  }
  for (int i = 0; i < kA; ++i) {
    for (int j = 0; j < kB; ++j) {
      T total = simd::fold<T>(sums[i][j]);
      for (int64_t tail = k; tail < n; ++tail) {
        total += a[i][tail] * b[j][tail];
      }
      out[i][j] = total;
    }
  }
}

template <typename T, int kA>
FASTMMA_INLINE void dot_block_row(const T* const* a, const T* const* b, int64_t b_count, int64_t n,
                                  T* const* out) {
  T* shifted[kA];
  int64_t j = 0;
  for (; j + 4 <= b_count; j += 4) {
    for (int i = 0; i < kA; ++i) {
      shifted[i] = out[i] + j;
    }
    dot_block<T, kA, 4>(a, b + j, n, shifted);
  }
  for (; j < b_count; ++j) {
    for (int i = 0; i < kA; ++i) {
      shifted[i] = out[i] + j;
    }
    dot_block<T, kA, 1>(a, b + j, n, shifted);
  }
}

// out[i][j] = sum_k a[i][k] * b[j][k] for i < a_count, j < b_count (a small matrix product A B^T).
template <typename T>
FASTMMA_INLINE void dot_grid(const T* const* a, int64_t a_count, const T* const* b, int64_t b_count, int64_t n,
                             T* const* out) {
  int64_t i = 0;
  for (; i + 4 <= a_count; i += 4) {
    dot_block_row<T, 4>(a + i, b, b_count, n, out + i);
  }
  for (; i < a_count; ++i) {
    dot_block_row<T, 1>(a + i, b, b_count, n, out + i);
  }
}

// out[i][k] = base[i][k] (+ extra[k]) + sum_j coefs[i][j] * sources[j][k] for kRows rows and kSources
// sources: each source pack is loaded once for all rows. out[i] may be base[i].
template <typename T, int kRows, int kSources, bool kExtra>
FASTMMA_INLINE void combine_block(T* const* out, const T* const* base, const T* extra, const T* const* sources,
                                  const T* const* coefs, int64_t n) {
  constexpr int64_t kWidth = Pack<T>::kWidth;
  int64_t k = 0;
  for (; k + kWidth <= n; k += kWidth) {
    Vec<T> source_packs[kSources];
    for (int j = 0; j < kSources; ++j) {
      source_packs[j] = simd::load(sources[j] + k);
    }
    for (int i = 0; i < kRows; ++i) {
      Vec<T> acc = simd::load(base[i] + k);
      if constexpr (kExtra) {
        acc += simd::load(extra + k);
      }
      for (int j = 0; j < kSources; ++j) {
        acc += simd::broadcast(coefs[i][j]) * source_packs[j];
      }
      simd::store(out[i] + k, acc);
    }
  }
  for (; k < n; ++k) {
    for (int i = 0; i < kRows; ++i) {
      T acc = base[i][k];
      if constexpr (kExtra) {
        acc += extra[k];
      }
      for (int j = 0; j < kSources; ++j) {
        acc += coefs[i][j] * sources[j][k];
      }
      out[i][k] = acc;
    }
  }
}

template <typename T, int kRows, int kSources>
FASTMMA_INLINE void combine_block_any_extra(T* const* out, const T* const* base, const T* extra,
                                            const T* const* sources, const T* const* coefs, int64_t n) {
  if (extra != nullptr) {
    combine_block<T, kRows, kSources, true>(out, base, extra, sources, coefs, n);
  } else {
    combine_block<T, kRows, kSources, false>(out, base, extra, sources, coefs, n);
  }
}

// combine_rows for kRows rows: sources in blocks of 8, 4 and 1; blocks after the first add to out.
template <typename T, int kRows>
FASTMMA_INLINE void combine_row_block(T* const* out, const T* const* base, const T* extra, const T* const* sources,
                                      int64_t source_count, const T* const* coefs, int64_t n) {
  const T* block_coefs[kRows];
  for (int64_t j = 0; j < source_count;) {
    const int64_t width = source_count - j >= 8 ? 8 : (source_count - j >= 4 ? 4 : 1);
    for (int i = 0; i < kRows; ++i) {
      block_coefs[i] = coefs[i] + j;
    }
    const T* const* block_base = j == 0 ? base : out;
    const T* block_extra = j == 0 ? extra : nullptr;
    if (width == 8) {
      combine_block_any_extra<T, kRows, 8>(out, block_base, block_extra, sources + j, block_coefs, n);
    } else if (width == 4) {
      combine_block_any_extra<T, kRows, 4>(out, block_base, block_extra, sources + j, block_coefs, n);
    } else {
      combine_block_any_extra<T, kRows, 1>(out, block_base, block_extra, sources + j, block_coefs, n);
    }
    j += width;
  }
}

// out[i][k] = base[i][k] (+ extra[k] unless null) + sum_j coefs[i][j] * sources[j][k]
// for i < row_count, j < source_count (at least one). out[i] may be base[i].
template <typename T>
FASTMMA_INLINE void combine_rows(T* const* out, const T* const* base, int64_t row_count, const T* extra,
                                 const T* const* sources, int64_t source_count, const T* const* coefs, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= row_count; i += 4) {
    combine_row_block<T, 4>(out + i, base + i, extra, sources, source_count, coefs + i, n);
  }
  for (; i < row_count; ++i) {
    combine_row_block<T, 1>(out + i, base + i, extra, sources, source_count, coefs + i, n);
  }
}

// dst[k] += sum_i coefs[i] * rows[i][k] for kRows rows at once (dst is read and written once).
template <typename T, int kRows>
FASTMMA_INLINE void add_scaled_block(T* __restrict dst, const T* const* rows, const T* coefs, int64_t n) {
  constexpr int64_t kWidth = Pack<T>::kWidth;
  Vec<T> coef_packs[kRows];
  for (int i = 0; i < kRows; ++i) {
    coef_packs[i] = simd::broadcast(coefs[i]);
  }
  int64_t k = 0;
  for (; k + kWidth <= n; k += kWidth) {
    Vec<T> acc = simd::load(dst + k);
    for (int i = 0; i < kRows; ++i) {
      acc += coef_packs[i] * simd::load(rows[i] + k);
    }
    simd::store(dst + k, acc);
  }
  for (; k < n; ++k) {
    T acc = dst[k];
    for (int i = 0; i < kRows; ++i) {
      acc += coefs[i] * rows[i][k];
    }
    dst[k] = acc;
  }
}

// dst[k] += sum_i coefs[i] * rows[i][k] for i < count.
template <typename T>
FASTMMA_INLINE void add_scaled_rows(T* dst, const T* const* rows, const T* coefs, int64_t count, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    add_scaled_block<T, 8>(dst, rows + i, coefs + i, n);
  }
  for (; i + 4 <= count; i += 4) {
    add_scaled_block<T, 4>(dst, rows + i, coefs + i, n);
  }
  for (; i + 2 <= count; i += 2) {
    add_scaled_block<T, 2>(dst, rows + i, coefs + i, n);
  }
  for (; i < count; ++i) {
    add_scaled_block<T, 1>(dst, rows + i, coefs + i, n);
  }
}

// out[k] = weight[k] * (x[k] * rstd): the RMSNorm output.
template <typename T>
FASTMMA_INLINE void normalize(const T* __restrict x, const T* __restrict weight, T rstd, T* __restrict out,
                              int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    out[k] = weight[k] * (x[k] * rstd);
  }
}

// out[k] = a[k] + b[k]
template <typename T>
FASTMMA_INLINE void add(const T* __restrict a, const T* __restrict b, T* __restrict out, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    out[k] = a[k] + b[k];
  }
}

// Start loading a row that the next iteration will read, so that it arrives while this one computes.
template <typename T>
FASTMMA_INLINE void prefetch(const T* row, int64_t n) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t offset = 0; offset < n * static_cast<int64_t>(sizeof(T)); offset += 64) {
    __builtin_prefetch(bytes + offset);
  }
}

template <typename Source, typename Target>
FASTMMA_INLINE void convert(const Source* __restrict source, Target* __restrict target, int64_t n) {
  if constexpr (std::is_same_v<Source, c10::BFloat16> && std::is_same_v<Target, float>) {
    // bf16 is the high half of a float: a shift the compiler vectorises (c10's conversion does not)
    const uint16_t* __restrict bits = reinterpret_cast<const uint16_t*>(source);
    uint32_t* __restrict out = reinterpret_cast<uint32_t*>(target);
    for (int64_t k = 0; k < n; ++k) {
      out[k] = static_cast<uint32_t>(bits[k]) << 16;
    }
  } else {
    for (int64_t k = 0; k < n; ++k) {
      target[k] = static_cast<Target>(source[k]);
    }
  }
}

// A row read as Acc: the row itself when it already is Acc, else its converted copy in `buffer`.
template <typename Acc, typename Scalar>
FASTMMA_INLINE const Acc* read_as(const Scalar* row, Acc* buffer, int64_t n) {
  if constexpr (std::is_same_v<Acc, Scalar>) {
    return row;
  } else {
    convert(row, buffer, n);
    return buffer;
  }
}

// Where to compute an output row in Acc: the row itself when it is Acc, else `buffer`
// (then `write_back` converts it into the row).
template <typename Acc, typename Scalar>
FASTMMA_INLINE Acc* compute_in(Scalar* row, Acc* buffer) {
  if constexpr (std::is_same_v<Acc, Scalar>) {
    return row;
  } else {
    return buffer;
  }
}

template <typename Acc, typename Scalar>
FASTMMA_INLINE void write_back(const Acc* computed, Scalar* row, int64_t n) {
  if constexpr (!std::is_same_v<Acc, Scalar>) {
    convert(computed, row, n);
  }
}

}  // namespace fastmma::rows
