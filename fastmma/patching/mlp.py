"""The frozen SwiGLU MLP with the memory-saving product (see fastmma.memory.swiglu).

The MLP keeps its class's parameters and names; only `forward` changes, through a subclass
swapped in with `__class__` (and swapped back by unpatch).
"""
from __future__ import annotations

from torch import nn

from ..memory import swiglu

_SUBCLASSES: dict[type, type] = {}


def use_recomputing_swiglu(mlp: nn.Module) -> bool:
    """Swap `mlp` to the recomputing forward if it is a SiLU-gated MLP; return whether it was."""
    is_swiglu = all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj")) and \
        _is_silu(getattr(mlp, "act_fn", None))
    if is_swiglu:
        mlp.__class__ = _subclass_for(type(mlp))
    return is_swiglu


def _is_silu(module) -> bool:
    """torch's nn.SiLU, or transformers' SiLUActivation (what ACT2FN["silu"] is in transformers 5)."""
    return isinstance(module, nn.SiLU) or (isinstance(module, nn.Module) and type(module).__name__ == "SiLUActivation"
                                           and type(module).__module__.startswith("transformers."))


def restore_mlp(mlp: nn.Module) -> None:
    base = getattr(type(mlp), "_fastmma_base_class", None)
    if base is not None:
        mlp.__class__ = base


def _subclass_for(base: type) -> type:
    if base not in _SUBCLASSES:
        def forward(self, x):
            return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))

        _SUBCLASSES[base] = type(base.__name__, (base,), {"forward": forward, "_fastmma_base_class": base,
                                                          "__module__": base.__module__})
    return _SUBCLASSES[base]
