// Row-major float32 GEMM for the blocks of the CPU kernels: the BLAS sgemm that PyTorch's CPU library
// carries (MKL in PyTorch's x86-64 wheels), resolved when the module loads, or ATen's addmm where that
// library exports none. Called from inside at::parallel_for, so each call runs on the calling thread.
#pragma once

#include <cstdint>

namespace fastmma::gemm {

// c[m, n] = alpha * op(a) @ op(b) + beta * c, all row-major with leading dimensions lda, ldb, ldc;
// op(a) is [m, k] (a is stored [k, m] when trans_a), op(b) is [k, n] (b is stored [n, k] when trans_b).
// With beta == 0, c is not read.
void gemm_rows(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
               int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// "blas" (the library's sgemm) or "aten" (no sgemm found, or forced).
const char* backend_name();

// Tests: run the ATen fallback even where sgemm exists.
void force_aten(bool enabled);

}  // namespace fastmma::gemm
