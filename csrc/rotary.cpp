// ATen entry points of the rotary position embedding: input checks, allocation, threading over positions.
// The row math is in rotary_kernels.h.
#include "rotary.h"

#include <ATen/Parallel.h>

#include "dispatch.h"
#include "outputs.h"
#include "rotary_kernels.h"

namespace fastmma {
namespace {

constexpr int64_t kGrainPositions = 16;

void check_operands(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && cos.device().is_cpu() && sin.device().is_cpu(),
              "rotary embedding (cpp backend): ", name, ", cos and sin must be CPU tensors; got ", x.device(), ", ",
              cos.device(), ", ", sin.device());
  TORCH_CHECK(is_kernel_float_type(x.scalar_type()) && cos.scalar_type() == x.scalar_type() &&
                  sin.scalar_type() == x.scalar_type(),
              "rotary embedding (cpp backend): ", name, ", cos and sin must share one dtype of float32, bfloat16 or "
              "float16; got ", x.scalar_type(), ", ", cos.scalar_type(), ", ", sin.scalar_type());
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(), "rotary embedding (cpp backend): ", name,
              " must be a contiguous [batch, length, heads, head_dim] tensor; got ", x.sizes(),
              " (contiguous: ", x.is_contiguous(), ")");
  const int64_t head_dim = x.size(3);
  TORCH_CHECK(head_dim % 2 == 0 && head_dim <= kernels::kRotaryMaxHeadDim, "rotary embedding (cpp backend): head_dim ",
              head_dim, " must be even and at most ", kernels::kRotaryMaxHeadDim);
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.dim() == 3 && cos.is_contiguous() && sin.is_contiguous() &&
                  (cos.size(0) == 1 || cos.size(0) == x.size(0)) && cos.size(1) == x.size(1) &&
                  cos.size(2) == head_dim,
              "rotary embedding (cpp backend): cos and sin must be contiguous [", x.size(0), " or 1, ", x.size(1), ", ",
              head_dim, "] tensors for ", name, " ", x.sizes(), "; got ", cos.sizes(), " and ", sin.sizes());
}

at::Tensor rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool backward) {
  at::Tensor out = new_output(x.sizes(), x.options());
  const int64_t length = x.size(1), heads = x.size(2), head_dim = x.size(3);
  const bool shared_positions = cos.size(0) == 1;
  FASTMMA_DISPATCH_FLOAT_TYPES(x.scalar_type(), "rotary", [&] {
    const scalar_t* x_data = x.data_ptr<scalar_t>();
    const scalar_t* cos_data = cos.data_ptr<scalar_t>();
    const scalar_t* sin_data = sin.data_ptr<scalar_t>();
    scalar_t* out_data = out.data_ptr<scalar_t>();
    at::parallel_for(0, x.size(0) * length, kGrainPositions, [&](int64_t begin, int64_t end) {
      kernels::rotary_span(x_data, cos_data, sin_data, out_data, begin, end, length, shared_positions, heads,
                           head_dim, backward);
    });
  });
  return out;
}

}  // namespace

at::Tensor rotary_forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  check_operands(x, cos, sin, "x");
  return rotate(x, cos, sin, false);
}

at::Tensor rotary_backward(const at::Tensor& grad_out, const at::Tensor& cos, const at::Tensor& sin) {
  check_operands(grad_out, cos, sin, "grad_out");
  return rotate(grad_out, cos, sin, true);
}

}  // namespace fastmma
