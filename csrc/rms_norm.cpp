// ATen entry point of the RMSNorm input gradient: input checks, allocation, threading over rows.
// The row math is in rms_norm_kernels.h.
#include "rms_norm.h"

#include <vector>

#include <ATen/Parallel.h>

#include "dispatch.h"
#include "outputs.h"
#include "rms_norm_kernels.h"

namespace fastmma {
namespace {

constexpr int64_t kGrainRows = 8;

void check_operands(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& rstd) {
  TORCH_CHECK(grad_y.device().is_cpu() && x.device().is_cpu() && weight.device().is_cpu() && rstd.device().is_cpu(),
              "rms_norm_input_grad (cpp backend): every operand must be a CPU tensor");
  TORCH_CHECK(is_kernel_float_type(x.scalar_type()) && grad_y.scalar_type() == x.scalar_type() &&
                  weight.scalar_type() == x.scalar_type(),
              "rms_norm_input_grad (cpp backend): grad_y, x and weight must share one dtype of float32, bfloat16 or "
              "float16; got ", grad_y.scalar_type(), ", ", x.scalar_type(), ", ", weight.scalar_type());
  TORCH_CHECK(x.dim() >= 1 && x.is_contiguous() && grad_y.is_contiguous() && grad_y.sizes() == x.sizes(),
              "rms_norm_input_grad (cpp backend): grad_y and x must be contiguous tensors of one shape; got ",
              grad_y.sizes(), " and ", x.sizes());
  const int64_t d = x.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == d && weight.is_contiguous(),
              "rms_norm_input_grad (cpp backend): weight must be a contiguous [", d, "] tensor; got ", weight.sizes());
  TORCH_CHECK(rstd.scalar_type() == at::kFloat && rstd.is_contiguous() && rstd.numel() * d == x.numel(),
              "rms_norm_input_grad (cpp backend): rstd must be a contiguous float32 tensor with one value per row of x ",
              x.sizes(), "; got ", rstd.scalar_type(), " ", rstd.sizes());
}

}  // namespace

at::Tensor rms_norm_input_grad(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& rstd) {
  check_operands(grad_y, x, weight, rstd);
  at::Tensor grad_x = new_output(x.sizes(), x.options());
  const int64_t d = x.size(-1), rows = d > 0 ? x.numel() / d : 0;
  FASTMMA_DISPATCH_FLOAT_TYPES(x.scalar_type(), "rms_norm_input_grad", [&] {
    at::parallel_for(0, rows, kGrainRows, [&](int64_t begin, int64_t end) {
      std::vector<float> scaled_grad(d), normed(d);
      kernels::rms_norm_input_grad_rows(grad_y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                        weight.data_ptr<scalar_t>(), rstd.data_ptr<float>(),
                                        grad_x.data_ptr<scalar_t>(), begin, end, d, scaled_grad.data(), normed.data());
    });
  });
  return grad_x;
}

}  // namespace fastmma
