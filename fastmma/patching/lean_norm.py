"""The frozen RMSNorms that carry no adapter, switched to the memory-saving op (fastmma.memory.rmsnorm).

The norm keeps its class's parameters and names; only `forward` changes, through a subclass
swapped in with `__class__` (and swapped back by unpatch / merge).
"""
from __future__ import annotations

from torch import nn

from ..memory import rms_norm

_SUBCLASSES: dict[type, type] = {}
_MARKER = "_fastmma_lean_norm_base"


def is_llama_rms_norm(norm) -> bool:
    """A LLaMA-style RMSNorm (Llama, Mistral, Qwen2): `weight`, `variance_epsilon`, y = w * normalize(x)."""
    return (isinstance(norm, nn.Module) and type(norm).__name__.endswith("RMSNorm")
            and type(norm).__name__ != "MMARMSNorm" and isinstance(getattr(norm, "weight", None), nn.Parameter)
            and hasattr(norm, "variance_epsilon"))


def use_lean_norm(norm: nn.Module) -> bool:
    """Swap `norm` to the input-and-rstd-only forward if it is a LLaMA-style RMSNorm; return whether it was."""
    if getattr(type(norm), _MARKER, None) is not None:
        return True
    if not is_llama_rms_norm(norm):
        return False
    norm.__class__ = _subclass_for(type(norm))
    return True


def restore_norms(model: nn.Module) -> None:
    for module in model.modules():
        base = getattr(type(module), _MARKER, None)
        if base is not None:
            module.__class__ = base


def _subclass_for(base: type) -> type:
    if base not in _SUBCLASSES:
        def forward(self, hidden_states):
            return rms_norm(hidden_states, self.weight, self.variance_epsilon)

        _SUBCLASSES[base] = type(base.__name__, (base,), {"forward": forward, _MARKER: base,
                                                          "__module__": base.__module__})
    return _SUBCLASSES[base]
