"""MMAConfig.recompute_attention: decoder layers that keep their input, v, o_proj's output, gate, up
and the attention's log-sum-exp only.

See fastmma.memory.layer_recompute for the mechanism. Here the layer, its stashed Linear layers
and the MLP's down projection get subclasses swapped in with `__class__` (parameters and names
unchanged), swapped back by `restore_layer_recompute`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..autocast import linear_output
from ..kv_cache import cache_in
from ..memory.layer_recompute import active_stash, frozen_linear, recompute_layer, trains
from .class_swap import base_class, restore_forwards, swap_forward
from .single_token import fsdp_wrapped

_MARKER = "_fastmma_layer_recompute_base"
STASHED_ATTENTION = ("v_proj", "o_proj")
STASHED_MLP = ("gate_proj", "up_proj")


def use_layer_recompute(layer: nn.Module, mlp_attr: str | None, stash_mlp: bool = True) -> bool:
    """Swap `layer` to the selectively recomputing forward if it has the LLaMA layout; return whether it did."""
    attention = getattr(layer, "self_attn", None)
    mlp = getattr(layer, mlp_attr, None) if mlp_attr else None
    linears = [getattr(attention, name, None) for name in (*STASHED_ATTENTION, "q_proj", "k_proj")]
    mlp_linears = [getattr(mlp, name, None) for name in (*STASHED_MLP, "down_proj")]
    if not all(isinstance(linear, nn.Linear) for linear in linears + mlp_linears):
        return False
    stashed = [getattr(attention, name) for name in STASHED_ATTENTION]
    if stash_mlp:
        stashed += [getattr(mlp, name) for name in STASHED_MLP]
    for linear in stashed:
        swap_forward(linear, _MARKER, "stashed", _stashed_forward)
    swap_forward(mlp.down_proj, _MARKER, "frozen", _frozen_forward)
    swap_forward(layer, _MARKER, "layer", _layer_forward)
    return True


def restore_layer_recompute(model: nn.Module) -> None:
    restore_forwards(model, _MARKER)


def _stashed_forward(self, x):
    stash = active_stash()
    if stash is None or trains(self):          # a weight that trains: recomputed like the rest, not stashed
        return linear_output(self, x)
    return stash.linear(self, x)



def _frozen_forward(self, x):
    if torch.is_grad_enabled():
        return frozen_linear(self, x)
    return linear_output(self, x)


def _layer_forward(self, hidden_states, *args, **kwargs):
    base_forward = base_class(self, _MARKER).forward
    if not _recomputes(self, kwargs):
        return base_forward(self, hidden_states, *args, **kwargs)
    return recompute_layer(lambda *a, **k: base_forward(self, *a, **k), hidden_states, *args, **kwargs)


def _recomputes(layer: nn.Module, kwargs: dict) -> bool:
    """Training with autograd, no HF checkpointing around the layer, not sharded by FSDP (its parameters
    are gathered around its own forward only), and nothing in its KV cache yet."""
    if not (torch.is_grad_enabled() and layer.training) or getattr(layer, "gradient_checkpointing", False):
        return False
    if fsdp_wrapped(layer):
        return False
    cache = cache_in(kwargs)
    layer_index = getattr(getattr(layer, "self_attn", None), "layer_idx", 0)
    return cache is None or cache.get_seq_length(layer_index) == 0
