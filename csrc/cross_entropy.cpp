// ATen entry point of the in-place softmax cross-entropy: input checks and threading over columns.
// The column math is in cross_entropy_kernels.h.
#include "cross_entropy.h"

#include <algorithm>
#include <vector>

#include <ATen/Parallel.h>

#include "cross_entropy_kernels.h"
#include "dispatch.h"

namespace fastmma {
namespace {

constexpr int64_t kGrainColumns = 16;

void check_inputs(const at::Tensor& logits, const at::Tensor& targets) {
  TORCH_CHECK(logits.device().is_cpu() && targets.device().is_cpu(),
              "cross_entropy_grad_ (cpp backend): logits and targets must be CPU tensors");
  const auto dtype = logits.scalar_type();
  TORCH_CHECK(is_kernel_float_type(dtype),
              "cross_entropy_grad_ (cpp backend): logits have dtype ", dtype,
              "; expected float32, bfloat16 or float16 (use the torch path for others)");
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous(),
              "cross_entropy_grad_ (cpp backend): logits must be a contiguous [vocab, tokens] tensor; got sizes ",
              logits.sizes(), logits.is_contiguous() ? "" : " (not contiguous)");
  TORCH_CHECK(targets.scalar_type() == at::kLong && targets.dim() == 1 && targets.size(0) == logits.size(1),
              "cross_entropy_grad_ (cpp backend): targets must be int64 of shape [", logits.size(1), "]; got ",
              targets.scalar_type(), " ", targets.sizes());
  if (targets.numel() > 0) {
    const int64_t low = targets.min().item<int64_t>(), high = targets.max().item<int64_t>();
    TORCH_CHECK(low >= 0 && high < logits.size(0), "cross_entropy_grad_ (cpp backend): targets must be in [0, ",
                logits.size(0), ") (the vocabulary); got values from ", low, " to ", high,
                " (drop ignored rows before calling)");
  }
}

}  // namespace

double cross_entropy_grad_(at::Tensor& logits, const at::Tensor& targets_in, double grad_scale) {
  check_inputs(logits, targets_in);
  const at::Tensor targets = targets_in.contiguous();
  const int64_t vocab = logits.size(0), columns = logits.size(1);
  std::vector<double> column_loss(columns, 0.0);
  const int64_t* target_data = targets.data_ptr<int64_t>();
  double* loss_data = column_loss.data();
  const float scale = static_cast<float>(grad_scale);
  FASTMMA_DISPATCH_FLOAT_TYPES(logits.scalar_type(), "cross_entropy_grad_", [&] {
    scalar_t* logits_data = logits.data_ptr<scalar_t>();
    at::parallel_for(0, columns, kGrainColumns, [&](int64_t begin, int64_t end) {
      for (int64_t first = begin; first < end; first += kernels::kCrossEntropySpan) {
        const int64_t n = std::min(kernels::kCrossEntropySpan, end - first);
        kernels::cross_entropy_span(logits_data, target_data, vocab, columns, first, n, scale, loss_data + first);
      }
    });
  });
  double total = 0.0;
  for (const double loss : column_loss) {
    total += loss;
  }
  return total;
}

}  // namespace fastmma
