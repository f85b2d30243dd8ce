"""What autocast would cast an op's operands to (one rule for the code that runs GEMMs itself), and frozen
Linear weights cast once for it (MMAConfig.cache_autocast_weights, see fastmma/patching/autocast_weights.py).

Autocast caches the low-precision copy of a weight only for leaf tensors that require grad, so with a
frozen fp32 base under bf16 autocast every Linear call would cast its whole weight again. A Linear marked
with `mark_caching` keeps its cast copy (refreshed when the weight changes: new storage, dtype or in-place
version); `linear_output` runs the GEMM on it with autocast off, the input and bias cast as autocast casts
them: the same operands, the same result.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CACHE = "_fastmma_autocast_weight"
_CACHES = "_fastmma_caches_autocast_weight"


def autocast_dtype(device_type: str, *dtypes: torch.dtype) -> torch.dtype | None:
    """The low-precision dtype autocast casts operands of these dtypes to on `device_type`, or None when
    autocast is off there or leaves them alone (it never casts float64 or non-floating operands)."""
    if not torch.is_autocast_enabled(device_type):
        return None
    if any(not dtype.is_floating_point or dtype == torch.float64 for dtype in dtypes):
        return None
    return torch.get_autocast_dtype(device_type)


def mark_caching(linear: nn.Module, enabled: bool = True) -> None:
    """Let `linear` keep its weight's autocast copy (enabled=False: stop, and drop the copy)."""
    if enabled:
        linear.__dict__[_CACHES] = True
    else:
        linear.__dict__.pop(_CACHES, None)
        linear.__dict__.pop(_CACHE, None)


def caches(linear: nn.Module) -> bool:
    return linear.__dict__.get(_CACHES, False)


def linear_output(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """F.linear(x, linear.weight, linear.bias) as autocast would run it, from the cached cast when
    `linear` caches one and autocast casts these operands."""
    dtype = _cast_dtype(linear, x)
    if dtype is None:
        return F.linear(x, linear.weight, linear.bias)
    bias = None if linear.bias is None else linear.bias.to(dtype)
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.to(dtype), _cast_weight(linear, dtype), bias)


def weight_in(linear: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """`linear`'s weight in `dtype`: itself, the cached copy when the Linear caches one, else a fresh cast."""
    if linear.weight.dtype == dtype:
        return linear.weight
    if caches(linear) and _owns_its_storage(linear.weight):
        return _cast_weight(linear, dtype)
    return linear.weight.to(dtype)


def _cast_dtype(linear: nn.Module, x: torch.Tensor) -> torch.dtype | None:
    """The dtype to run in from the cached copy, or None to run the Linear as it is: not caching, autocast
    off or leaving these operands alone, nothing to cast, a weight that trains, or one FSDP shards or gathers."""
    if not caches(linear):
        return None
    weight, bias = linear.weight, linear.bias
    dtype = autocast_dtype(x.device.type, x.dtype, weight.dtype)
    if dtype is None or weight.dtype == dtype or weight.requires_grad or (bias is not None and bias.requires_grad):
        return None
    return dtype if _owns_its_storage(weight) else None


def _owns_its_storage(weight: torch.Tensor) -> bool:
    """A plain tensor that is not a view into a larger buffer (FSDP's flat parameters) nor a DTensor."""
    return type(weight) in (torch.Tensor, nn.Parameter) and \
        weight.untyped_storage().nbytes() == weight.numel() * weight.element_size()


def _cast_weight(linear: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    weight = linear.weight
    key = (dtype, weight.device, weight.data_ptr(), weight._version)
    cached = linear.__dict__.get(_CACHE)
    if cached is None or cached[0] != key:
        cached = (key, weight.detach().to(dtype))
        linear.__dict__[_CACHE] = cached
    return cached[1]
