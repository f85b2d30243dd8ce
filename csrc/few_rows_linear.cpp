// ATen entry points of the few-rows Linear: input checks, float copies of the rows, threading.
// The row math is in few_rows_linear_kernels.h.
#include "few_rows_linear.h"

#include <ATen/Parallel.h>

#include "dispatch.h"
#include "few_rows_linear_kernels.h"
#include "outputs.h"

namespace fastmma {
namespace {

constexpr int64_t kGrainOutputs = 64;     // weight rows per forward task
constexpr int64_t kGrainInputs = 256;     // input features per backward task

void check_operand(const at::Tensor& tensor, const char* name, int64_t dim, const at::Tensor& weight) {
  TORCH_CHECK(tensor.device().is_cpu(), "few_rows_linear (cpp backend): ", name, " is on ", tensor.device(),
              "; this backend runs on CPU tensors only");
  const auto dtype = tensor.scalar_type();
  TORCH_CHECK(is_kernel_float_type(dtype), "few_rows_linear (cpp backend): ",
              name, " has dtype ", dtype, "; expected float32, bfloat16 or float16");
  TORCH_CHECK(dtype == weight.scalar_type(), "few_rows_linear (cpp backend): ", name, " is ", dtype,
              " but the weight is ", weight.scalar_type(), "; pass one dtype");
  TORCH_CHECK(tensor.dim() == dim, "few_rows_linear (cpp backend): ", name, " must have ", dim, " dimensions; got ",
              tensor.sizes());
}

void check_rows(const at::Tensor& rows, const char* name) {
  TORCH_CHECK(rows.size(0) >= 1 && rows.size(0) <= kernels::kMaxFewRows, "few_rows_linear (cpp backend): ", name,
              " has ", rows.size(0), " rows; this kernel takes 1 to ", kernels::kMaxFewRows,
              " (use F.linear for more)");
}

}  // namespace

at::Tensor few_rows_linear_forward(const at::Tensor& x_in, const at::Tensor& weight_in,
                                   const std::optional<at::Tensor>& bias_in) {
  check_operand(weight_in, "weight", 2, weight_in);
  check_operand(x_in, "x", 2, weight_in);
  check_rows(x_in, "x");
  const int64_t k = weight_in.size(1), n_count = weight_in.size(0), rows = x_in.size(0);
  TORCH_CHECK(x_in.size(1) == k, "few_rows_linear (cpp backend): x has ", x_in.size(1), " features but the weight ",
              k, " (weight is [out_features, in_features])");
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    check_operand(*bias_in, "bias", 1, weight_in);
    TORCH_CHECK(bias_in->size(0) == n_count, "few_rows_linear (cpp backend): bias has ", bias_in->size(0),
                " elements; expected ", n_count);
    bias = bias_in->contiguous();
  }
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor x = x_in.to(at::kFloat).contiguous();                                // [M, K] float
  at::Tensor y = new_output({rows, n_count}, weight.options());
  FASTMMA_DISPATCH_FLOAT_TYPES(weight.scalar_type(), "few_rows_linear_forward", [&] {
    const scalar_t* weight_data = weight.data_ptr<scalar_t>();
    const scalar_t* bias_data = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    scalar_t* y_data = y.data_ptr<scalar_t>();
    const float* x_data = x.data_ptr<float>();
    at::parallel_for(0, n_count, kGrainOutputs, [&](int64_t begin, int64_t end) {
      kernels::few_rows_forward_span(x_data, rows, weight_data, bias_data, y_data, k, n_count, begin, end);
    });
  });
  return y;
}

at::Tensor few_rows_linear_backward(const at::Tensor& grad_y_in, const at::Tensor& weight_in) {
  check_operand(weight_in, "weight", 2, weight_in);
  check_operand(grad_y_in, "grad_y", 2, weight_in);
  check_rows(grad_y_in, "grad_y");
  const int64_t k = weight_in.size(1), n_count = weight_in.size(0), rows = grad_y_in.size(0);
  TORCH_CHECK(grad_y_in.size(1) == n_count, "few_rows_linear (cpp backend): grad_y has ", grad_y_in.size(1),
              " features but the weight has ", n_count, " output features");
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor grad_y = grad_y_in.to(at::kFloat).contiguous();                     // [M, N] float
  at::Tensor grad_x = new_output({rows, k}, weight.options());
  FASTMMA_DISPATCH_FLOAT_TYPES(weight.scalar_type(), "few_rows_linear_backward", [&] {
    const scalar_t* weight_data = weight.data_ptr<scalar_t>();
    scalar_t* grad_x_data = grad_x.data_ptr<scalar_t>();
    const float* grad_y_data = grad_y.data_ptr<float>();
    at::parallel_for(0, k, kGrainInputs, [&](int64_t begin, int64_t end) {
      kernels::few_rows_backward_span(grad_y_data, rows, weight_data, grad_x_data, k, n_count, begin, end);
    });
  });
  return grad_x;
}

}  // namespace fastmma
