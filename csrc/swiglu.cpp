// ATen entry points of the fused SwiGLU product: input checks, allocation, threading.
// The element math is in swiglu_kernels.h.
#include "swiglu.h"

#include <ATen/Parallel.h>

#include "dispatch.h"
#include "outputs.h"
#include "swiglu_kernels.h"

namespace fastmma {
namespace {

constexpr int64_t kGrainElements = 32768;

void check_operand(const at::Tensor& tensor, const char* name, const at::Tensor& gate) {
  TORCH_CHECK(tensor.device().is_cpu(), "swiglu (cpp backend): ", name, " is on ", tensor.device(),
              "; this backend runs on CPU tensors only");
  const auto dtype = tensor.scalar_type();
  TORCH_CHECK(is_kernel_float_type(dtype), "swiglu (cpp backend): ", name,
              " has dtype ", dtype, "; expected float32, bfloat16 or float16 (use the torch path for others)");
  TORCH_CHECK(dtype == gate.scalar_type() && tensor.sizes() == gate.sizes(), "swiglu (cpp backend): ", name, " is ",
              dtype, " ", tensor.sizes(), " but gate is ", gate.scalar_type(), " ", gate.sizes(),
              "; pass tensors of one shape and dtype");
}

}  // namespace

at::Tensor swiglu_forward(const at::Tensor& gate_in, const at::Tensor& up_in) {
  check_operand(gate_in, "gate", gate_in);
  check_operand(up_in, "up", gate_in);
  const at::Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
  at::Tensor out = new_output(gate.sizes(), gate.options());
  FASTMMA_DISPATCH_FLOAT_TYPES(gate.scalar_type(), "swiglu_forward", [&] {
    const scalar_t* gate_data = gate.data_ptr<scalar_t>();
    const scalar_t* up_data = up.data_ptr<scalar_t>();
    scalar_t* out_data = out.data_ptr<scalar_t>();
    at::parallel_for(0, gate.numel(), kGrainElements, [&](int64_t begin, int64_t end) {
      kernels::swiglu_forward_span(gate_data, up_data, out_data, begin, end);
    });
  });
  return out;
}

std::vector<at::Tensor> swiglu_backward(const at::Tensor& grad_out_in, const at::Tensor& gate_in,
                                        const at::Tensor& up_in, bool need_grad_gate, bool need_grad_up) {
  check_operand(gate_in, "gate", gate_in);
  check_operand(up_in, "up", gate_in);
  check_operand(grad_out_in, "grad_out", gate_in);
  const at::Tensor grad_out = grad_out_in.contiguous(), gate = gate_in.contiguous(), up = up_in.contiguous();
  at::Tensor grad_gate = need_grad_gate ? new_output(gate.sizes(), gate.options()) : at::Tensor();
  at::Tensor grad_up = need_grad_up ? new_output(gate.sizes(), gate.options()) : at::Tensor();
  if (!need_grad_gate && !need_grad_up) {
    return {grad_gate, grad_up};
  }
  FASTMMA_DISPATCH_FLOAT_TYPES(gate.scalar_type(), "swiglu_backward", [&] {
    const scalar_t* grad_out_data = grad_out.data_ptr<scalar_t>();
    const scalar_t* gate_data = gate.data_ptr<scalar_t>();
    const scalar_t* up_data = up.data_ptr<scalar_t>();
    scalar_t* grad_gate_data = need_grad_gate ? grad_gate.data_ptr<scalar_t>() : nullptr;
    scalar_t* grad_up_data = need_grad_up ? grad_up.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, gate.numel(), kGrainElements, [&](int64_t begin, int64_t end) {
      kernels::swiglu_backward_span(grad_out_data, gate_data, up_data, grad_gate_data, grad_up_data, begin, end);
    });
  });
  return {grad_gate, grad_up};
}

}  // namespace fastmma
