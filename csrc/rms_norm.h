// Input gradient of a frozen RMSNorm, y = weight * (x * rstd rounded to x's dtype), from its input and rstd
// (what fastmma.memory.rmsnorm keeps for backward), in one pass over each row on CPU. float32, bfloat16 or
// float16 operands of one dtype, computed in float32; the scaled gradient is rounded as autograd's product
// is, and the result once.
#pragma once

#include <ATen/ATen.h>

namespace fastmma {

// grad_y, x [..., D], weight [D], rstd [...] float32 -> grad_x [..., D]:
//   g = grad_y * weight (rounded to the dtype, as autograd's product), n = x * rstd,
//   grad_x = rstd * (g - n * mean(g * n)).
at::Tensor rms_norm_input_grad(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& rstd);

}  // namespace fastmma
