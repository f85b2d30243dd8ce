"""MMAConfig.cache_autocast_weights: frozen Linear weights cast once for autocast, not at every call.

Autocast caches the low-precision copy of a weight only for leaf tensors that require grad, so with
a frozen fp32 base under bf16 autocast every Linear call casts its whole weight again: the decoder's
layers in the main pass, once more in the modality pass, for every step. Here a frozen `nn.Linear`
keeps its cast copy (refreshed when the weight changes: new storage, dtype or in-place version) and
runs the GEMM on it with autocast off, with the input and bias cast as autocast casts them: the same
operands, the same result. Outside autocast, with a weight that trains, or one that is a view into a
larger buffer or a DTensor (FSDP), the Linear runs as before.
The copies are dropped by `restore_autocast_weights` (unpatch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..autocast import autocast_dtype
from .class_swap import base_class, restore_forwards, swap_forward

_MARKER = "_fastmma_autocast_weights_base"
_CACHE = "_fastmma_autocast_weight"


def use_autocast_weight_cache(linear: nn.Module) -> bool:
    """Swap a plain `nn.Linear` (not already given another forward) to the caching forward."""
    if type(linear) is not nn.Linear:
        return False
    swap_forward(linear, _MARKER, "cached", _cached_forward)
    return True


def restore_autocast_weights(model: nn.Module) -> None:
    for module in model.modules():
        if base_class(module, _MARKER) is not None and _CACHE in module.__dict__:
            del module.__dict__[_CACHE]
    restore_forwards(model, _MARKER)


def _cached_forward(self, x):
    dtype = _cast_dtype(self, x)
    if dtype is None:
        return nn.Linear.forward(self, x)
    bias = None if self.bias is None else self.bias.to(dtype)
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.to(dtype), _cast_weight(self, dtype), bias)


def _cast_dtype(linear: nn.Module, x: torch.Tensor) -> torch.dtype | None:
    """The dtype to run in from the cached copy, or None to run the Linear as it is: autocast off or
    leaving these operands alone, nothing to cast, a weight that trains, or one FSDP shards or gathers."""
    weight, bias = linear.weight, linear.bias
    dtype = autocast_dtype(x.device.type, x.dtype, weight.dtype)
    if dtype is None or weight.dtype == dtype or weight.requires_grad or (bias is not None and bias.requires_grad):
        return None
    return dtype if _owns_its_storage(weight) else None


def _owns_its_storage(weight: torch.Tensor) -> bool:
    """A plain tensor that is not a view into a larger buffer (FSDP's flat parameters) nor a DTensor."""
    return type(weight) in (torch.Tensor, nn.Parameter) and \
        weight.untyped_storage().nbytes() == weight.numel() * weight.element_size()


def weight_in(linear: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """`linear`'s weight in `dtype`: itself, the cached copy when the Linear caches one, else a fresh cast."""
    if linear.weight.dtype == dtype:
        return linear.weight
    if base_class(linear, _MARKER) is not None and _owns_its_storage(linear.weight):
        return _cast_weight(linear, dtype)
    return linear.weight.to(dtype)


def _cast_weight(linear: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    weight = linear.weight
    key = (dtype, weight.device, weight.data_ptr(), weight._version)
    cached = linear.__dict__.get(_CACHE)
    if cached is None or cached[0] != key:
        cached = (key, weight.detach().to(dtype))
        linear.__dict__[_CACHE] = cached
    return cached[1]
