// The causal softmax's backward on blocks of attention scores, in place, for the blocked attention
// backward of fastmma/ops/cpp_causal_attention.py. A block holds query rows [first_row, first_row + block_rows)
// of one or more heads against keys [0, columns): row r is query first_row + r % block_rows and sees
// keys 0 .. first_row + r % block_rows. Scores, probabilities and gradients are float32.
#pragma once

#include <ATen/ATen.h>

namespace fastmma {

// scores [N, R, C] (raw q.k) become exp(scale * scores - lse) over the visible keys, 0 beyond them.
void causal_probs_(at::Tensor& scores, const at::Tensor& lse, int64_t first_row, int64_t block_rows, double scale);

// grad_probs [N, R, C] becomes scale * probs * (grad_probs - sum_j probs * grad_probs): the gradient of the
// raw scores, given the probabilities (as causal_probs_ leaves them) and their gradient.
void causal_softmax_backward_(at::Tensor& grad_probs, const at::Tensor& probs, double scale);

}  // namespace fastmma
