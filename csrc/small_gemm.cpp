// See small_gemm.h.
#include "small_gemm.h"

#include <atomic>
#include <limits>

#include <ATen/ATen.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

// Fortran BLAS, 32-bit integers (LP64), as libtorch_cpu exports it where it links MKL. Weak: where no
// library in this module's scope defines it, the address is null and the ATen fallback runs.
extern "C" void sgemm_(const char* trans_a, const char* trans_b, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));

namespace fastmma::gemm {
namespace {

std::atomic<bool> aten_forced{false};

bool use_blas() {
  return sgemm_ != nullptr && !aten_forced.load(std::memory_order_relaxed);
}

bool fits_int(int64_t value) {
  return value >= 0 && value <= std::numeric_limits<int>::max();
}

// A row-major [rows, columns] view of `data` with leading dimension ld, transposed when asked.
at::Tensor view(const float* data, int64_t rows, int64_t columns, int64_t ld, bool transposed) {
  at::Tensor matrix = at::from_blob(const_cast<float*>(data), {rows, columns}, {ld, 1}, at::kFloat);
  return transposed ? matrix.t() : matrix;
}

void aten_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
               int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);    // float32 whatever the caller
  at::Tensor out = view(c, m, n, ldc, false);
  at::Tensor lhs = trans_a ? view(a, k, m, lda, true) : view(a, m, k, lda, false);
  at::Tensor rhs = trans_b ? view(b, n, k, ldb, true) : view(b, k, n, ldb, false);
  at::addmm_out(out, out, lhs, rhs, beta, alpha);              // beta == 0: out is not read (NaN included)
}

}  // namespace

void gemm_rows(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
               int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) {
    return;
  }
  TORCH_CHECK(fits_int(m) && fits_int(n) && fits_int(k) && fits_int(lda) && fits_int(ldb) && fits_int(ldc),
              "fastmma gemm: a block dimension exceeds 32-bit BLAS indices (m=", m, ", n=", n, ", k=", k, ")");
  if (!use_blas() || k == 0) {                                     // some BLAS reject k = 0 with lda = 0
    aten_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  // Column-major BLAS sees each row-major matrix transposed: c^T = op(b)^T @ op(a)^T.
  const char op_a = trans_a ? 'T' : 'N', op_b = trans_b ? 'T' : 'N';
  const int rows = static_cast<int>(n), columns = static_cast<int>(m), inner = static_cast<int>(k);
  const int ld_a = static_cast<int>(lda), ld_b = static_cast<int>(ldb), ld_c = static_cast<int>(ldc);
  sgemm_(&op_b, &op_a, &rows, &columns, &inner, &alpha, b, &ld_b, a, &ld_a, &beta, c, &ld_c);
}

const char* backend_name() {
  return use_blas() ? "blas" : "aten";
}

void force_aten(bool enabled) {
  aten_forced.store(enabled);
}

}  // namespace fastmma::gemm
