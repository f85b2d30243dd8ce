// Rotary position embedding (RoPE, the LLaMA "rotate half" form) on CPU, one pass forward and one
// backward, for the [B, L, heads, d] output of a q or k projection and the rows' cos / sin [B or 1, L, d].
// float32, bfloat16 or float16 (computed in float32, rounded once).
#pragma once

#include <ATen/ATen.h>

namespace fastmma {

// out = x * cos + rotate_half(x) * sin, rotate_half(x) = [-x[d/2:], x[:d/2]] per head.
at::Tensor rotary_forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// The input gradient of rotary_forward: grad * cos - rotate_half(grad * sin).
at::Tensor rotary_backward(const at::Tensor& grad_out, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace fastmma
