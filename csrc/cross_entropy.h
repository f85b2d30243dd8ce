// Softmax cross-entropy of a chunk of vocab-major logits, its gradient written over the logits.
#pragma once

#include <ATen/ATen.h>

namespace fastmma {

// logits [V, C] (contiguous; float32, bfloat16 or float16): column c holds one token's logits over the
// vocabulary. targets [C] (int64, each in [0, V)). Computed in float32 (sums in float64). On return
// column c of `logits` holds grad_scale * (softmax(column c) - onehot(targets[c])), the gradient of
// grad_scale * loss; returns the loss summed over the columns, sum_c logsumexp(column c) - column c[target].
double cross_entropy_grad_(at::Tensor& logits, const at::Tensor& targets, double grad_scale);

}  // namespace fastmma
