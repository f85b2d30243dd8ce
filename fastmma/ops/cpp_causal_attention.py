"""Causal self-attention on CPU that keeps q, k, v and the rows' log-sum-exp for backward, not its output.

Both directions are the C++ kernels of csrc/causal_attention.cpp. Flash attention's backward needs the
output for the softmax's row term D_i = sum_c dO_ic O_ic; this backward takes it as D_i = sum_j p_ij dp_ij
instead, from whole rows of probabilities recomputed from the kept log-sum-exp. Query rows are taken in
blocks, the query heads that share a key/value head (grouped-query attention) stacked into one block, each
block against all the keys it sees (the causal triangle costs about half of a full score matrix); each
block's GEMMs are one-thread BLAS calls and the blocks run in parallel. Everything is computed in float32
(bf16/fp16 blocks are upcast) and only the outputs are rounded to the input dtype. The backward sums each
key/value head's blocks in one fixed order, so its bits do not depend on the thread count.

So a layer keeps [B, H, L] floats for its attention beyond q, k and v, instead of another
[B, L, H * d] output; and a layer that recomputes itself in backward (fastmma.memory.layer_recompute)
need not run the attention forward again when it kept the log-sum-exp (`kept_lse`).
"""
from __future__ import annotations

import torch

from . import backend
from .cpp_backend import _C, is_available

OP_CAUSAL_ATTENTION = "causal_attention"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, scale, kept_lse):
        # query [B, H, L, d], key / value [B, KV, L, d] with H a multiple of KV.
        # kept_lse: a replay's log-sum-exp [B, H, L] from the first forward, whose output is not needed again.
        if kept_lse is None:
            out, lse = forward_with_lse(query, key, value, scale)                   # [B, L, H, d], [B, H, L]
        else:
            out, lse = query.new_empty(query.shape[0], query.shape[2], query.shape[1], query.shape[3]), kept_lse
        ctx.save_for_backward(query, key, value, lse)
        ctx.scale = scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, _grad_lse):
        query, key, value, lse = ctx.saved_tensors
        return (*attention_backward(grad_out, query, key, value, lse, ctx.scale), None, None)


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                     kept_lse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(softmax(scale * q k^T + causal mask) v as [B, L, H, d], the rows' log-sum-exp [B, H, L] or None).

    query [B, H, L, d], key / value [B, KV, L, d]. Without autograd this is the forward kernel alone.
    kept_lse: see CausalAttention.forward (the returned output is then not computed)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        return CausalAttention.apply(query, key, value, float(scale), kept_lse)
    return forward_with_lse(query, key, value, float(scale))[0], None


def applies(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether the kernel takes these operands: CPU, one supported dtype, as many keys as queries."""
    return (query.device.type == "cpu" and query.dtype in DTYPES and key.dtype == query.dtype
            and value.dtype == query.dtype and query.dim() == 4 and key.dim() == 4 and value.shape == key.shape
            and query.shape[0] == key.shape[0] and query.shape[2] == key.shape[2] and query.shape[3] == key.shape[3]
            and key.shape[1] > 0 and query.shape[1] % key.shape[1] == 0
            and backend.has_implementation(OP_CAUSAL_ATTENTION, "cpu"))


def forward_with_lse(query, key, value, scale):
    """(out [B, L, H, d], lse [B, H, L] float32) of query [B, H, L, d] over key / value [B, KV, L, d]."""
    return tuple(_C.causal_attention_forward(query, key, value, scale))


def attention_backward(grad_out, query, key, value, lse, scale):
    """(grad_query [B, H, L, d], grad_key, grad_value [B, KV, L, d]) from grad_out [B, L, H, d]."""
    return tuple(_C.causal_attention_backward(grad_out, query, key, value, lse, scale))


if is_available():
    backend.register(OP_CAUSAL_ATTENTION, "cpp", causal_attention)
