"""MMAConfig.cache_autocast_weights: frozen Linear weights cast once for autocast, not at every call.

The cache itself is fastmma/autocast.py (`linear_output`, `weight_in`). Here a plain `nn.Linear` gets a
forward that runs through it; a Linear that another feature already gave its own forward (the stashed
Linear layers of recompute_attention) is only marked, and that forward reads the cache itself. Outside
autocast, with a weight that trains, or one that is a view into a larger buffer or a DTensor (FSDP), the
Linear runs as before. The copies are dropped by `restore_autocast_weights` (unpatch).
"""
from __future__ import annotations

from torch import nn

from ..autocast import caches, linear_output, mark_caching
from .class_swap import is_swapped, restore_forwards, swap_forward

_MARKER = "_fastmma_autocast_weights_base"


def use_autocast_weight_cache(linear: nn.Module) -> bool:
    """Let a Linear keep its autocast cast: swap a plain `nn.Linear` to the caching forward, mark one
    with a fastmma forward of its own. Other modules are left alone."""
    if not isinstance(linear, nn.Linear) or (type(linear) is not nn.Linear and not is_swapped(linear)):
        return False
    if type(linear) is nn.Linear:
        swap_forward(linear, _MARKER, "cached", _cached_forward)
    mark_caching(linear)
    return True


def restore_autocast_weights(model: nn.Module) -> None:
    for module in model.modules():
        if caches(module):
            mark_caching(module, enabled=False)
    restore_forwards(model, _MARKER)


def _cached_forward(self, x):
    return linear_output(self, x)
