"""LM head + next-token cross-entropy without materialising [tokens, vocab] logits.

The frozen LM head is applied to a chunk of hidden states at a time; each chunk's loss and its
gradient with respect to the hidden states are computed in the forward pass, so only the
gradient [tokens, D] is kept for backward (not the logits [tokens, V]). Logits are upcast to
(at least) fp32 as Hugging Face's loss does. Each chunk's logits live in one [V, chunk] buffer
that becomes the softmax and then the logits' gradient in place, so at most one chunk of
logits (a tenth of the tokens by default, see `default_chunk_tokens`) exists at any time.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..autocast import autocast_dtype

IGNORE_INDEX = -100


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, head_weight, targets, normalizer, chunk_tokens):
        # hidden [N, D], head_weight [V, D] (frozen), targets [N] with IGNORE_INDEX for no-loss rows.
        # Only the scored rows go through the head (LaVIN scores the answers alone); the others get a zero gradient.
        compute = torch.promote_types(hidden.dtype, torch.float32)               # logits in at least fp32
        loss_sum = torch.zeros((), dtype=compute, device=hidden.device)
        grad_hidden = torch.zeros_like(hidden)                                   # [N, D]
        scored_rows = (targets != IGNORE_INDEX).nonzero().squeeze(1)             # [S]
        # The GEMMs run in the dtype autocast would pick; the head is cast to it once here, not by
        # autocast at each of the chunk's two GEMMs (a frozen weight's cast is not cached by autocast).
        gemm_dtype = _head_output_dtype(hidden, head_weight)
        head = head_weight.to(gemm_dtype)                                        # [V, D]
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, scored_rows.shape[0], chunk_tokens):
                rows = scored_rows[start:start + chunk_tokens]                   # [chunk]
                grad_rows, chunk_loss = _chunk_loss_and_grad(hidden[rows].to(gemm_dtype), head, targets[rows],
                                                             compute)
                loss_sum += chunk_loss
                grad_hidden[rows] = (grad_rows / normalizer).to(grad_hidden.dtype)
        ctx.save_for_backward(grad_hidden)
        return loss_sum / normalizer

    @staticmethod
    def backward(ctx, grad_loss):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), None, None, None, None


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
    chunk = chunk_tokens or default_chunk_tokens(hidden.shape[0], _head_output_dtype(hidden, head_weight))
    return _ChunkedLinearCrossEntropy.apply(hidden, head_weight, targets, max(normalizer, 1.0), chunk)


MIN_CHUNK_TOKENS = 16
CHUNK_ALIGN = 16


def _head_output_dtype(hidden: torch.Tensor, head_weight: torch.Tensor) -> torch.dtype:
    """The dtype the head's GEMM gives: autocast's when it casts these operands, else the promoted one."""
    return autocast_dtype(hidden.device.type, hidden.dtype, head_weight.dtype) or \
        torch.promote_types(hidden.dtype, head_weight.dtype)


def default_chunk_tokens(tokens: int, logits_dtype: torch.dtype = torch.float32) -> int:
    """Rows per chunk when none is given.

    A tenth of the tokens when the head's GEMM gives fp32 logits, a sixteenth when it gives 16-bit ones (the
    chunk then briefly exists in both precisions): either way under an eighth of the full fp32 logits from
    256 tokens on. At most 1024 rows, and at least 16 (or all the tokens): each chunk reads the whole
    [V, D] head, so one-row chunks of a small batch would be a GEMV each; wider chunks also run both
    GEMMs faster (on CPU, 64-row chunks cost ~15% more than 128-row ones at D=576, V=49152).
    """
    share = 10 if torch.finfo(logits_dtype).bits >= 32 else 16
    rows = math.ceil(tokens / share)
    if rows > CHUNK_ALIGN:
        rows -= rows % CHUNK_ALIGN            # whole 16-row blocks: 103 rows ran both GEMMs ~25% slower than 96 on CPU
    return max(min(tokens, MIN_CHUNK_TOKENS), min(1024, rows))
