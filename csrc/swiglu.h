// Fused SwiGLU product on CPU: out = silu(gate) * up, elementwise, and its backward.
// gate, up, out and the gradients share one shape and one dtype: float32, bfloat16 or float16
// (computed in float32).
#pragma once

#include <vector>

#include <ATen/ATen.h>

namespace fastmma {

at::Tensor swiglu_forward(const at::Tensor& gate, const at::Tensor& up);

// Returns {grad_gate, grad_up}; a gradient that was not asked for is an undefined tensor (None in Python).
std::vector<at::Tensor> swiglu_backward(const at::Tensor& grad_out, const at::Tensor& gate, const at::Tensor& up,
                                        bool need_grad_gate, bool need_grad_up);

}  // namespace fastmma
