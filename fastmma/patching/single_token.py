"""A LLaMA-layout decoder layer applied to sequences of a single token, without q, k, RoPE or softmax.

A token that attends only to itself gets softmax weight 1 on its own value, so the attention output
is o_proj(v_proj(n)) for every head (grouped-query heads repeat their key/value head). The modality
pass (routing.py) runs the modality embeddings through the stack this way: the same numbers as the
full layer, with a third of its small-tensor work, which matters because the pass runs on every
training forward. Its frozen Linear layers run through the few-rows C++ kernel on CPU
(fastmma/ops/cpp_few_rows_linear.py), which reads each weight once for all the modality rows.
"""
from __future__ import annotations

import torch
from torch import nn

from ..memory import swiglu
from ..ops import cpp_few_rows_linear
from ..autocast import weight_in
from .mlp import is_swiglu_mlp


def supports_single_token(layer: nn.Module) -> bool:
    """Whether `layer` has the LLaMA layout this shortcut relies on (else run the layer itself).

    A layer wrapped by FSDP runs itself too: its parameters are gathered only around its own forward.
    """
    if fsdp_wrapped(layer):
        return False
    attention = getattr(layer, "self_attn", None)
    needed = ("v_proj", "o_proj", "num_key_value_groups", "head_dim")
    return (attention is not None and all(hasattr(attention, name) for name in needed)
            and all(hasattr(layer, name) for name in ("input_layernorm", "post_attention_layernorm", "mlp"))
            and not (attention.training and getattr(attention, "attention_dropout", 0.0) > 0.0))


def fsdp_wrapped(layer: nn.Module) -> bool:
    if hasattr(layer, "_fsdp_wrapped_module") or type(layer).__name__.startswith("FSDP"):   # FSDP1 / FSDP2
        return True
    return any(type(p).__name__ == "DTensor" for p in layer.parameters(recurse=False))


def single_token_layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """`layer(hidden)` for hidden [N, 1, D]: each row a one-token sequence at position 0."""
    attention = layer.self_attn
    values = _linear(attention.v_proj, layer.input_layernorm(hidden))            # [N, 1, H_kv * hd]
    groups = attention.num_key_value_groups
    if groups > 1:                                                               # query head j reads kv head j // groups
        rows = values.shape[0]
        values = values.view(rows, 1, -1, attention.head_dim).repeat_interleave(groups, dim=2)
        values = values.reshape(rows, 1, -1)                                     # [N, 1, H * hd]
    hidden = hidden + _linear(attention.o_proj, values)
    return hidden + _mlp(layer.mlp, layer.post_attention_layernorm(hidden))


def _linear(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    dtype = cpp_few_rows_linear.run_dtype(linear, x)
    if dtype is None:
        return linear(x)
    return cpp_few_rows_linear.few_rows_linear(x, weight_in(linear, dtype), linear.bias, dtype)


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The MLP on the modality rows; a patched SwiGLU MLP without its recomputation (the rows are few)."""
    if not is_swiglu_mlp(mlp):
        return mlp(x)
    return _linear(mlp.down_proj, swiglu(_linear(mlp.gate_proj, x), _linear(mlp.up_proj, x)))
