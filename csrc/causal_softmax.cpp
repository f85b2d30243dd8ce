// ATen entry points of the causal softmax: input checks and threading over rows.
// The row math is in causal_softmax_kernels.h.
#include "causal_softmax.h"

#include <ATen/Parallel.h>

#include "causal_softmax_kernels.h"

namespace fastmma {
namespace {

constexpr int64_t kGrainRows = 8;

void check_block(const at::Tensor& block, const char* name, int64_t first_row, int64_t block_rows) {
  TORCH_CHECK(block.device().is_cpu() && block.scalar_type() == at::kFloat && block.dim() == 3 &&
                  block.is_contiguous(),
              "causal attention (cpp backend): ", name,
              " must be a contiguous float32 CPU tensor [N, rows, keys]; got ",
              block.scalar_type(), " ", block.sizes(), " on ", block.device());
  TORCH_CHECK(block_rows > 0 && first_row >= 0 && block.size(1) % block_rows == 0 &&
                  block.size(2) == first_row + block_rows,
              "causal attention (cpp backend): ", name, " ", block.sizes(), " does not hold whole blocks of ",
              block_rows, " query rows starting at row ", first_row, " (expected rows a multiple of ", block_rows,
              " and keys = ", first_row + block_rows, ")");
}

}  // namespace

void causal_probs_(at::Tensor& scores, const at::Tensor& lse, int64_t first_row, int64_t block_rows, double scale) {
  check_block(scores, "scores", first_row, block_rows);
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.is_contiguous() && lse.dim() == 2 &&
                  lse.size(0) == scores.size(0) && lse.size(1) == scores.size(1),
              "causal attention (cpp backend): lse must be a contiguous float32 tensor [", scores.size(0), ", ",
              scores.size(1), "]; got ", lse.scalar_type(), " ", lse.sizes());
  const int64_t rows = scores.size(0) * scores.size(1), columns = scores.size(2), per_batch = scores.size(1);
  float* data = scores.data_ptr<float>();
  const float* lse_data = lse.data_ptr<float>();
  at::parallel_for(0, rows, kGrainRows, [&](int64_t begin, int64_t end) {
    kernels::causal_probs_span(data, lse_data, begin, end, per_batch, first_row, block_rows, columns,
                               static_cast<float>(scale));
  });
}

void causal_softmax_backward_(at::Tensor& grad_probs, const at::Tensor& probs, double scale) {
  TORCH_CHECK(grad_probs.scalar_type() == at::kFloat && probs.scalar_type() == at::kFloat &&
                  grad_probs.is_contiguous() && probs.is_contiguous() && grad_probs.sizes() == probs.sizes() &&
                  grad_probs.device().is_cpu() && probs.device().is_cpu(),
              "causal attention (cpp backend): grad_probs and probs must be contiguous float32 CPU tensors of one "
              "shape; got ", grad_probs.scalar_type(), " ", grad_probs.sizes(), " and ", probs.scalar_type(), " ",
              probs.sizes());
  const int64_t columns = probs.dim() > 0 ? probs.size(-1) : 1;
  const int64_t rows = columns > 0 ? probs.numel() / columns : 0;
  float* grad = grad_probs.data_ptr<float>();
  const float* p = probs.data_ptr<float>();
  at::parallel_for(0, rows, kGrainRows, [&](int64_t begin, int64_t end) {
    kernels::softmax_backward_span(grad, p, begin, end, columns, static_cast<float>(scale));
  });
}

}  // namespace fastmma
