"""Causal self-attention on CPU that keeps q, k, v and the rows' log-sum-exp for backward, not its output.

Forward is torch's CPU flash-attention kernel (it returns the output and the log-sum-exp). Flash
attention's backward needs the output too, for the softmax's row term D_i = sum_c dO_ic O_ic; this
backward takes it as D_i = sum_j p_ij dp_ij instead, from whole rows of probabilities: the query rows
are taken in blocks of `BLOCK_ROWS`, each block of every head against all the keys it sees (the causal
triangle costs about half of a full score matrix), the query heads that share a key/value head
(grouped-query attention) stacked into one batched GEMM. The probabilities (recomputed from the kept
log-sum-exp) and the scores' gradient are the C++ kernels of csrc/causal_softmax.cpp; every GEMM and
sum runs in float32 (bf16/fp16 blocks are upcast) and only the gradients are rounded to the input dtype.

So a layer keeps [B, H, L] floats for its attention beyond q, k and v, instead of another
[B, L, H * d] output; and a layer that recomputes itself in backward (fastmma.memory.layer_recompute)
need not run the attention forward again when it kept the log-sum-exp (`replay_attention`).
"""
from __future__ import annotations

import torch

from . import backend
from .cpp_backend import _C, is_available

OP_CAUSAL_ATTENTION = "causal_attention"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_ROWS = 64


class CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, scale, kept_lse):
        # query [B, H, L, d], key / value [B, KV, L, d] with H a multiple of KV.
        # kept_lse: a replay's log-sum-exp [B, H, L] from the first forward, whose output is not needed again.
        if kept_lse is None:
            out, lse = flash_forward(query, key, value, scale)                   # [B, L, H, d], [B, H, L]
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

    query [B, H, L, d], key / value [B, KV, L, d]. Without autograd this is torch's kernel alone.
    kept_lse: see CausalAttention.forward (the returned output is then not computed)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        return CausalAttention.apply(query, key, value, float(scale), kept_lse)
    return flash_forward(query, key, value, float(scale))[0], None


def applies(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether the kernel takes these operands: CPU, one supported dtype, as many keys as queries."""
    return (query.device.type == "cpu" and query.dtype in DTYPES and key.dtype == query.dtype
            and value.dtype == query.dtype and query.dim() == 4 and key.dim() == 4 and value.shape == key.shape
            and query.shape[0] == key.shape[0] and query.shape[2] == key.shape[2] and query.shape[3] == key.shape[3]
            and key.shape[1] > 0 and query.shape[1] % key.shape[1] == 0
            and backend.has_implementation(OP_CAUSAL_ATTENTION, "cpu"))


def flash_forward(query, key, value, scale):
    """torch's CPU flash-attention kernel, causal: (out [B, L, H, d], lse [B, H, L] float32)."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, True,
                                                                          scale=scale)[:2]
    return out.transpose(1, 2), lse.to(torch.float32)


def attention_backward(grad_out, query, key, value, lse, scale, block_rows: int = BLOCK_ROWS):
    """(grad_query [B, H, L, d], grad_key, grad_value [B, KV, L, d]) from grad_out [B, L, H, d]."""
    batch, heads, length, head_dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    blocks = _Blocks(batch, kv_heads, group, head_dim)
    queries = query.transpose(1, 2)                                                 # [B, L, H, d] (a view)
    keys = key.to(torch.float32).reshape(batch * kv_heads, length, head_dim)       # [B*KV, L, d]
    values = value.to(torch.float32).reshape(batch * kv_heads, length, head_dim)
    lse_rows = lse.reshape(batch * kv_heads, group, length)                        # [B*KV, G, L]
    grad_query = torch.empty(batch, length, heads, head_dim, dtype=query.dtype, device=query.device)
    grad_keys = torch.zeros(batch * kv_heads, length, head_dim, dtype=torch.float32, device=query.device)
    grad_values = torch.zeros_like(grad_keys)                                     # [B*KV, L, d]
    for start in range(0, length, block_rows):
        stop = min(length, start + block_rows)
        query_rows = blocks.gather(queries, start, stop)                          # [B*KV, G*rows, d]
        grad_rows = blocks.gather(grad_out, start, stop)
        probs = torch.bmm(query_rows, keys[:, :stop].transpose(1, 2))            # [B*KV, G*rows, stop]
        _C.causal_probs_(probs, lse_rows[:, :, start:stop].reshape(probs.shape[:2]).contiguous(), start,
                         stop - start, scale)
        grad_values[:, :stop] += torch.bmm(probs.transpose(1, 2), grad_rows)     # [B*KV, stop, d]
        grad_scores = torch.bmm(grad_rows, values[:, :stop].transpose(1, 2))     # d probs, then d scores
        _C.causal_softmax_backward_(grad_scores, probs, scale)
        blocks.scatter(torch.bmm(grad_scores, keys[:, :stop]), grad_query, start, stop)
        grad_keys[:, :stop] += torch.bmm(grad_scores.transpose(1, 2), query_rows)
    shape = (batch, kv_heads, length, head_dim)
    return grad_query.transpose(1, 2), grad_keys.view(shape).to(key.dtype), grad_values.view(shape).to(value.dtype)


class _Blocks:
    """Query-row blocks of [B, L, H, d] tensors as float32 [B * KV, G * rows, d]: a group's heads stacked."""

    def __init__(self, batch, kv_heads, group, head_dim):
        self.batch, self.kv_heads, self.group, self.head_dim = batch, kv_heads, group, head_dim

    def _split_heads(self, tensor):                                                 # [B, L, KV, G, d]
        return tensor.view(self.batch, -1, self.kv_heads, self.group, self.head_dim)

    def gather(self, tensor, start, stop):
        rows = stop - start
        block = torch.empty(self.batch * self.kv_heads, self.group * rows, self.head_dim, dtype=torch.float32,
                            device=tensor.device)
        block.view(self.batch, self.kv_heads, self.group, rows, self.head_dim).copy_(
            self._split_heads(tensor)[:, start:stop].permute(0, 2, 3, 1, 4))
        return block

    def scatter(self, block, target, start, stop):
        rows = stop - start
        self._split_heads(target)[:, start:stop].copy_(
            block.view(self.batch, self.kv_heads, self.group, rows, self.head_dim).permute(0, 3, 1, 2, 4))


if is_available():
    backend.register(OP_CAUSAL_ATTENTION, "cpp", causal_attention)
