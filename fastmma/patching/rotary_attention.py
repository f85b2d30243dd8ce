"""MMAConfig.fused_rotary: LLaMA attention layers that rotate q and k with the one-pass C++ kernel on CPU.

transformers' LlamaAttention applies the rotary embedding with five tensor ops per tensor forward and
as many backward, and a layer that recomputes itself (MMAConfig.recompute_attention) runs them again;
fastmma/ops/cpp_rotary.py does each direction in one pass. The swapped forward is LlamaAttention's,
step for step, except for that call; every call the kernel does not take (another device, mixed dtypes
under autocast, an odd head size) runs transformers' `apply_rotary_pos_emb` as before. Only attention
modules whose class runs LlamaAttention's own forward are swapped (Mistral, Qwen2 and the others keep
theirs), through a subclass set with `__class__` that `restore_fused_rotary` swaps back.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama import modeling_llama

from ..ops import cpp_rotary
from .class_swap import base_class, restore_forwards, swap_forward

_MARKER = "_fastmma_rotary_base"
# LlamaAttention.forward's parameters in the transformers versions this forward follows.
_LLAMA_PARAMETERS = ("self", "hidden_states", "position_embeddings", "attention_mask", "past_key_values", "kwargs")


def use_fused_rotary(attention: nn.Module) -> bool:
    """Swap `attention` to the fused-rotary forward if it runs LlamaAttention's forward; return whether it did."""
    if type(attention).forward is not modeling_llama.LlamaAttention.forward or not _follows_llama_forward():
        return False
    swap_forward(attention, _MARKER, "rotary", _forward)
    return True


def rotary_base(attention: nn.Module) -> type | None:
    """The class `attention` had before `use_fused_rotary` swapped it (None if it was not swapped)."""
    return base_class(attention, _MARKER)


def restore_fused_rotary(model: nn.Module) -> None:
    restore_forwards(model, _MARKER)


def _follows_llama_forward() -> bool:
    return tuple(inspect.signature(modeling_llama.LlamaAttention.forward).parameters) == _LLAMA_PARAMETERS


def _forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
    input_shape = hidden_states.shape[:-1]
    heads_shape = (*input_shape, -1, self.head_dim)
    query, key = rotate(self.q_proj(hidden_states).view(heads_shape),              # [B, H, L, d] views
                        self.k_proj(hidden_states).view(heads_shape), *position_embeddings)   # [B, KV, L, d]
    value = self.v_proj(hidden_states).view(heads_shape).transpose(1, 2)            # [B, KV, L, d]
    if past_key_values is not None:
        key, value = past_key_values.update(key, value, self.layer_idx)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                      modeling_llama.eager_attention_forward)
    output, weights = attention(self, query, key, value, attention_mask,
                                dropout=0.0 if not self.training else self.attention_dropout,
                                scaling=self.scaling, **kwargs)                    # [B, L, H, d]
    return self.o_proj(output.reshape(*input_shape, -1).contiguous()), weights


def rotate(query_rows: torch.Tensor, key_rows: torch.Tensor, cos: torch.Tensor,
           sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotated query [B, H, L, d], rotated key [B, KV, L, d]) from the projections' rows [B, L, heads, d]
    and the position tables cos / sin [B or 1, L, d]."""
    if cpp_rotary.applies(query_rows, cos, sin) and cpp_rotary.applies(key_rows, cos, sin):
        return (cpp_rotary.cpp_rotary(query_rows, cos, sin).transpose(1, 2),
                cpp_rotary.cpp_rotary(key_rows, cos, sin).transpose(1, 2))
    return modeling_llama.apply_rotary_pos_emb(query_rows.transpose(1, 2), key_rows.transpose(1, 2), cos, sin)
