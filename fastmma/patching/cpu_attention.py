"""The "fastmma" attention implementation: causal self-attention whose backward needs no attention output.

Registered with transformers' AttentionInterface (and a mask function, `fastmma_mask`) under `NAME`, so
a model set to it calls `fastmma_attention` from its attention layers. Training-shaped calls on CPU (causal, no
mask, as many keys as queries, no dropout) run fastmma/ops/cpp_causal_attention.py: C++ blocked forward
and backward, the backward keeping q, k, v and the rows' log-sum-exp only. Every other call (a padding mask,
decoding with a KV cache, dropout, a sliding window shorter than the sequence, another device, a missing
extension) is transformers' SDPA function, unchanged. Under selective layer recomputation
(memory/layer_recompute.py) the forward keeps the log-sum-exp in the layer's stash, and the replay in
backward skips the attention forward.

Right-padded batches (how training batches are padded) get no mask when every key and query is in the
call: with padding only at the end of each row, every real token sees only real tokens under the
causal mask alone, so every real position's output is exact; only the padded positions (whose labels
are ignored) see the padding. Left padding, a KV cache or any other pattern keeps SDPA's mask.
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, sdpa_mask

from ..memory.layer_recompute import active_stash
from ..ops import backend, cpp_causal_attention

NAME = "fastmma"


def fastmma_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      is_causal=None, **kwargs):
    """transformers' attention-function signature: query [B, H, L, d], key/value [B, KV, S, d] ->
    (output [B, L, H, d], None).

    q, k and v of different float dtypes are promoted to one first (a KV cache created by a float32 call
    upcasts later bf16 values exactly; the layer's recomputation runs without the cache and must match)."""
    common = torch.promote_types(torch.promote_types(query.dtype, key.dtype), value.dtype)
    query, key, value = (t.to(common) for t in (query, key, value))
    if not _takes(module, query, key, value, attention_mask, dropout, is_causal, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    stash = active_stash()
    if stash is None:
        return cpp_causal_attention.causal_attention(query, key, value, scale)[0], None
    return stash.attention(module, lambda kept_lse: cpp_causal_attention.causal_attention(query, key, value, scale,
                                                                                           kept_lse)), None


def _takes(module, query, key, value, attention_mask, dropout, is_causal, kwargs) -> bool:
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    return (causal and attention_mask is None and not dropout and query.shape[2] > 1
            and not kwargs.get("output_attentions") and kwargs.get("softcap") is None
            and (kwargs.get("sliding_window") or key.shape[2]) >= key.shape[2]       # a window wider than the keys
            and kwargs.get("position_bias") is None
            and kwargs.get("cache") is None and cpp_causal_attention.applies(query, key, value))


def fastmma_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                 mask_function=causal_mask_function, attention_mask=None, allow_is_causal_skip: bool = True,
                 **kwargs):
    """SDPA's mask, or None for a right-padded batch of whole causal sequences (see the module docstring)."""
    if (allow_is_causal_skip and mask_function is causal_mask_function and q_offset == 0 and kv_offset == 0
            and q_length == kv_length and _right_padded(attention_mask, kv_length)):
        attention_mask = None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask,
                     allow_is_causal_skip=allow_is_causal_skip, **kwargs)


def _right_padded(attention_mask, length: int) -> bool:
    """Whether a [B, length] padding mask has its zeros only at the end of each row."""
    if attention_mask is None or attention_mask.dim() != 2 or attention_mask.shape[-1] != length:
        return False
    keep = attention_mask.bool()
    return bool((keep[:, 1:] <= keep[:, :-1]).all())


def available() -> bool:
    """Whether the C++ kernels are built (without them the implementation would be SDPA throughout)."""
    return backend.has_implementation(cpp_causal_attention.OP_CAUSAL_ATTENTION, "cpu")


AttentionInterface.register(NAME, fastmma_attention)
AttentionMaskInterface.register(NAME, fastmma_mask)
