// Causal self-attention on CPU for training-shaped calls (as many keys as queries, no mask, grouped-query
// heads allowed), forward and backward, computed in float32 for float32/bf16/fp16 operands. The backward
// needs q, k, v and the rows' log-sum-exp, not the output: it takes flash attention's row term
// D_i = sum_c dO_ic O_ic as sum_j p_ij dp_ij from whole rows of probabilities.
//
// Work is split into blocks of query rows of the query heads that share one key/value head; each block's
// GEMMs are single-threaded BLAS calls (small_gemm.h) and blocks run in parallel.
#pragma once

#include <vector>

#include <ATen/ATen.h>

namespace fastmma {

// query [B, H, L, d], key / value [B, KV, L, d] (H a multiple of KV, any strides) ->
// (out [B, L, H, d] in the query's dtype, lse [B, H, L] float32: log sum_j e^(scale q_i . k_j), j <= i).
std::vector<at::Tensor> causal_attention_forward(const at::Tensor& query, const at::Tensor& key,
                                                 const at::Tensor& value, double scale);

// grad_out [B, L, H, d] -> (grad_query [B, H, L, d], grad_key, grad_value [B, KV, L, d]) in the operands' dtype.
std::vector<at::Tensor> causal_attention_backward(const at::Tensor& grad_out, const at::Tensor& query,
                                                  const at::Tensor& key, const at::Tensor& value,
                                                  const at::Tensor& lse, double scale);

// Tests: which GEMM the blocks use ("blas" or "aten"), and forcing the ATen fallback.
std::string attention_gemm_backend();
void force_aten_gemm(bool enabled);

}  // namespace fastmma
