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

import functools
import inspect

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama import modeling_llama

from ..kv_cache import CACHE_KEYWORDS, cache_in
from ..ops import cpp_rotary
from .class_swap import base_class, restore_forwards, swap_forward

_MARKER = "_fastmma_rotary_base"


def use_fused_rotary(attention: nn.Module) -> bool:
    """Swap `attention` to the fused-rotary forward if it runs LlamaAttention's forward; return whether it did."""
    if type(attention).forward is not modeling_llama.LlamaAttention.forward or _installed_form() is None:
        return False
    swap_forward(attention, _MARKER, "rotary", _forward)
    return True


def rotary_base(attention: nn.Module) -> type | None:
    """The class `attention` had before `use_fused_rotary` swapped it (None if it was not swapped)."""
    return base_class(attention, _MARKER)


def restore_fused_rotary(model: nn.Module) -> None:
    restore_forwards(model, _MARKER)


@functools.cache
def _installed_form() -> bool | None:
    """Whether the installed LlamaAttention.forward hands the call's kwargs to the cache update (transformers
    5.24 on, where the cache keyword became `cache`), or None when its parameters are not the
    (hidden_states, position_embeddings, attention_mask, <cache keyword>, **kwargs) this forward follows."""
    forward = modeling_llama.LlamaAttention.forward
    parameters = tuple(inspect.signature(forward).parameters)
    if parameters[:4] != ("self", "hidden_states", "position_embeddings", "attention_mask") or \
            len(parameters) != 6 or parameters[4] not in CACHE_KEYWORDS or parameters[5] != "kwargs":
        return None
    try:
        source = inspect.getsource(forward)
    except (OSError, TypeError):
        return None
    return "self.layer_idx, kwargs=kwargs)" in source


def _forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
    cache = cache_in(kwargs)
    kwargs = {name: value for name, value in kwargs.items() if name not in CACHE_KEYWORDS}
    input_shape = hidden_states.shape[:-1]
    heads_shape = (*input_shape, -1, self.head_dim)
    query, key = rotate(self.q_proj(hidden_states).view(heads_shape),              # [B, H, L, d] views
                        self.k_proj(hidden_states).view(heads_shape), *position_embeddings)   # [B, KV, L, d]
    value = self.v_proj(hidden_states).view(heads_shape).transpose(1, 2)            # [B, KV, L, d]
    if cache is not None:
        update_kwargs = {"kwargs": kwargs} if _installed_form() else {}
        key, value = cache.update(key, value, self.layer_idx, **update_kwargs)
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
