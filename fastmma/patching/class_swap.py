"""Swapping a module's `forward` through a subclass set with `__class__`, and swapping it back.

The subclass keeps the class's name, module, parameters and buffers; it records its base under a
marker attribute, so one call can restore every module a feature swapped.
"""
from __future__ import annotations

from torch import nn

_SUBCLASSES: dict[tuple[type, str, str], type] = {}
_SWAPPED: set[type] = set()                     # the values of _SUBCLASSES


def swap_forward(module: nn.Module, marker: str, kind: str, forward) -> None:
    """Give `module` the forward `forward` (one subclass per base class, marker and kind)."""
    base = getattr(type(module), marker, None) or type(module)
    key = (base, marker, kind)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(base.__name__, (base,), {"forward": forward, marker: base,
                                                         "__module__": base.__module__})
        _SWAPPED.add(_SUBCLASSES[key])
    module.__class__ = _SUBCLASSES[key]


def is_swapped(module: nn.Module) -> bool:
    """Whether `module`'s class is one `swap_forward` made (under any marker)."""
    return type(module) in _SWAPPED


def base_class(module: nn.Module, marker: str) -> type | None:
    """The class `module` had before `swap_forward` with this marker (None if it was not swapped)."""
    return getattr(type(module), marker, None)


def restore_forwards(model: nn.Module, marker: str) -> None:
    """Put back the original class of every module of `model` swapped with this marker."""
    for module in model.modules():
        base = base_class(module, marker)
        if base is not None:
            module.__class__ = base
