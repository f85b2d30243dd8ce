// Fused RMSNorm + MMA adapter on CPU, over the rows of x [M, D].
//
//   n = norm_weight * x * rstd                  rstd = 1 / sqrt(mean(x^2) + eps)        [M]
//   h = (A n + a) * h_mask                      A = down_weight [r, D], a = down_bias   [M, r]
//   y = n + bias_table[t] + U[t] h              t = table_index[row], U[t] block-diagonal
//
// The caller folds the router into the tables: up_table [T, r/G, D] is the effective
// up-projection transposed so that its rows run along D (output channel d, in group
// g = d / (D/G), reads h[g*r/G + j] with weight up_table[t, j, d]); bias_table [T, D].
// x, y and their gradients are float32, bfloat16, float16 or float64; every other tensor is in
// the accumulation dtype (float64 for float64 x, else float32). table_index is int64.
#pragma once

#include <optional>
#include <vector>

#include <ATen/ATen.h>

namespace fastmma {

// Returns {y [M, D] in x's dtype, rstd [M], h [M, r]}.
std::vector<at::Tensor> rms_norm_adapter_forward(const at::Tensor& x, const at::Tensor& norm_weight, double eps,
                                                 const at::Tensor& down_weight, const at::Tensor& down_bias,
                                                 const at::Tensor& up_table, const at::Tensor& bias_table,
                                                 const at::Tensor& table_index,
                                                 const std::optional<at::Tensor>& h_mask);

// Returns {grad_x, grad_norm_weight, grad_down_weight, grad_down_bias, grad_up_table, grad_bias_table};
// a gradient that was not asked for is an undefined tensor (None in Python).
std::vector<at::Tensor> rms_norm_adapter_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                  const at::Tensor& norm_weight, const at::Tensor& rstd,
                                                  const at::Tensor& h, const std::optional<at::Tensor>& h_mask,
                                                  const at::Tensor& down_weight, const at::Tensor& up_table,
                                                  const at::Tensor& table_index, bool need_grad_x,
                                                  bool need_grad_norm_weight, bool need_grad_down,
                                                  bool need_grad_tables);

}  // namespace fastmma
