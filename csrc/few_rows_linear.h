// A frozen Linear applied to a few rows (the modality pass: one row per modality): each weight row is
// read once for all the rows, forward and backward, where a GEMM library would pack the weight first.
#pragma once

#include <optional>

#include <ATen/ATen.h>

namespace fastmma {

// x [M, K], weight [N, K], bias [N] or none, one dtype (float32, bfloat16 or float16), M <= 8; computed in
// float32. Returns y = x weight^T + bias [M, N].
at::Tensor few_rows_linear_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias);

// grad_y [M, N], weight [N, K] -> grad_x = grad_y weight [M, K] (the weight is frozen: no weight gradient).
at::Tensor few_rows_linear_backward(const at::Tensor& grad_y, const at::Tensor& weight);

}  // namespace fastmma
