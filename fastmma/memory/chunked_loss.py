"""LM head + next-token cross-entropy without materialising [tokens, vocab] logits.

The frozen LM head is applied to a chunk of hidden states at a time; each chunk's loss and its
gradient with respect to the hidden states are computed in the forward pass, so only the
gradient [tokens, D] is kept for backward (not the logits [tokens, V]). Each chunk's logits live
in one [V, chunk] buffer that becomes the logits' gradient in place, so at most one chunk of logits
exists at any time. On CPU with the C++ extension (fastmma/ops/cpp_cross_entropy.py) the buffer
stays in the head's output dtype and the softmax runs in float32 inside the kernel: a chunk is an
eighth of the tokens. Elsewhere the logits are upcast to (at least) fp32 as Hugging Face's loss does,
with torch ops: a tenth of the tokens, or a sixteenth when a 16-bit copy exists briefly too (see
`default_chunk_tokens`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..autocast import autocast_dtype
from ..ops import cpp_cross_entropy

IGNORE_INDEX = -100


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, head_weight, targets, normalizer, chunk_tokens, in_place):
        # hidden [N, D], head_weight [V, D] (frozen), targets [N] with IGNORE_INDEX for no-loss rows.
        # in_place: the C++ kernel takes this device and the head's output dtype (cpp_cross_entropy.applies).
        # Only the scored rows go through the head (LaVIN scores the answers alone); the others get a zero gradient.
        compute = torch.promote_types(hidden.dtype, torch.float32)               # logits in at least fp32
        loss_sum = torch.zeros((), dtype=compute, device=hidden.device)         # the torch path's chunks
        host_loss_sum = 0.0                                                      # the C++ kernel's (float64 sums)
        grad_hidden = torch.zeros_like(hidden)                                   # [N, D]
        scored_rows = (targets != IGNORE_INDEX).nonzero().squeeze(1)             # [S]
        # The GEMMs run in the dtype autocast would pick; the head is cast to it once here, not by
        # autocast at each of the chunk's two GEMMs (a frozen weight's cast is not cached by autocast).
        gemm_dtype = _head_output_dtype(hidden, head_weight)
        head = head_weight.to(gemm_dtype)                                        # [V, D]
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, scored_rows.shape[0], chunk_tokens):
                rows = scored_rows[start:start + chunk_tokens]                   # [chunk]
                hidden_rows = hidden[rows].to(gemm_dtype)                        # [chunk, D]
                if in_place:
                    grad_rows, chunk_loss = _chunk_loss_and_grad_in_place(hidden_rows, head, targets[rows],
                                                                          1.0 / normalizer)
                    host_loss_sum += chunk_loss
                else:
                    grad_rows, chunk_loss = _chunk_loss_and_grad(hidden_rows, head, targets[rows], compute)
                    grad_rows = grad_rows / normalizer
                    loss_sum += chunk_loss
                grad_hidden[rows] = grad_rows.to(grad_hidden.dtype)
        ctx.save_for_backward(grad_hidden)
        return loss_sum.new_tensor(host_loss_sum / normalizer) if in_place else loss_sum / normalizer

    @staticmethod
    def backward(ctx, grad_loss):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), None, None, None, None, None


def _chunk_loss_and_grad(hidden_rows, head_weight, chunk_targets, compute):
    """(d loss_sum / d hidden_rows [chunk, D], loss_sum) of one chunk of scored rows.

    The logits are laid out vocab-major, [V, chunk]: on CPU the head GEMM and the gradient GEMM are
    markedly faster in this orientation for chunks of a few dozen rows (a wide output, a long
    contraction), and the per-row reductions run over the outer dimension, vectorised across rows.
    """
    columns = torch.arange(chunk_targets.shape[0], device=hidden_rows.device)         # [chunk]
    # One [V, chunk] buffer: the logits become exp, then softmax, then the logits' gradient in place.
    logits = (head_weight @ hidden_rows.t()).to(compute)                             # [V, chunk]
    target_logits = logits[chunk_targets, columns]                                   # [chunk]
    column_max = logits.amax(dim=0)                                                  # [chunk]
    logits.sub_(column_max).exp_()
    sum_exp = logits.sum(dim=0)                                                      # [chunk]
    loss_sum = (sum_exp.log() + column_max - target_logits).sum()                   # -log softmax[target]
    grad_logits = logits.div_(sum_exp)                                               # softmax
    grad_logits.index_put_((chunk_targets, columns), torch.full_like(target_logits, -1.0), accumulate=True)
    grad_rows = (head_weight.t() @ grad_logits.to(head_weight.dtype)).t()            # [chunk, D] (autocast: bf16)
    return grad_rows, loss_sum


def _chunk_loss_and_grad_in_place(hidden_rows, head_weight, chunk_targets, grad_scale: float):
    """`_chunk_loss_and_grad` through the C++ kernel, its gradient already scaled by grad_scale.

    The [V, chunk] buffer stays in the head's output dtype; the kernel computes in float32 and
    overwrites it with the logits' gradient, which the second GEMM reads as autocast's would.
    """
    logits = head_weight @ hidden_rows.t()                                           # [V, chunk]
    loss_sum = cpp_cross_entropy.cross_entropy_grad_(logits, chunk_targets, grad_scale)
    grad_rows = (head_weight.t() @ logits).t()                                       # [chunk, D]
    return grad_rows, loss_sum


def chunked_linear_cross_entropy(hidden_states: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor,
                                 num_items_in_batch=None, chunk_tokens: int | None = None) -> torch.Tensor:
    """Mean next-token loss of logits = hidden_states @ head_weight.T against labels shifted left by one.

    hidden_states [B, L, D], labels [B, L]. Same result as Hugging Face's ForCausalLMLoss.
    chunk_tokens: scored rows per chunk (default: `default_chunk_tokens`).
    """
    if head_weight.requires_grad:
        raise ValueError("chunked_linear_cross_entropy keeps the LM head frozen; disable `chunked_loss` in the "
                         "config to train the head")
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].reshape(-1)          # [B*L]
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])                      # [B*L, D]
    normalizer = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
    normalizer = float(normalizer) if not torch.is_tensor(normalizer) else float(normalizer.item())
    logits_dtype = _head_output_dtype(hidden, head_weight)
    in_place = cpp_cross_entropy.applies(hidden.device, logits_dtype)
    chunk = chunk_tokens or default_chunk_tokens(hidden.shape[0], logits_dtype, in_place)
    return _ChunkedLinearCrossEntropy.apply(hidden, head_weight, targets, max(normalizer, 1.0), chunk, in_place)


MIN_CHUNK_TOKENS = 16
CHUNK_ALIGN = 16


def _head_output_dtype(hidden: torch.Tensor, head_weight: torch.Tensor) -> torch.dtype:
    """The dtype the head's GEMM gives: autocast's when it casts these operands, else the promoted one."""
    return autocast_dtype(hidden.device.type, hidden.dtype, head_weight.dtype) or \
        torch.promote_types(hidden.dtype, head_weight.dtype)


def default_chunk_tokens(tokens: int, logits_dtype: torch.dtype = torch.float32, in_place: bool = False) -> int:
    """Rows per chunk when none is given.

    in_place (the C++ kernel: the chunk exists once, in the head's dtype): an eighth of the tokens, so
    the chunk is at most an eighth of the full logits. Otherwise a tenth when the head's GEMM gives fp32
    logits, a sixteenth when it gives 16-bit ones (the chunk then briefly exists in both precisions):
    under an eighth of the full fp32 logits from 256 tokens on, with room for the per-token vectors.
    Rounded down to whole 16-row blocks (103 rows ran both GEMMs ~25% slower than 96 on CPU), at most
    1024 rows, and at least 16 (or all the tokens): each chunk reads the whole [V, D] head, so one-row
    chunks of a small batch would be a GEMV each; wider chunks also run both GEMMs faster (on CPU at
    D=576, V=49152: 128-row chunks take ~8% less time than 96-row ones).
    """
    share = 8 if in_place else 10 if torch.finfo(logits_dtype).bits >= 32 else 16
    rows = tokens // share
    if rows > CHUNK_ALIGN:
        rows -= rows % CHUNK_ALIGN
    return max(min(tokens, MIN_CHUNK_TOKENS), min(1024, rows))
