"""The frozen RMSNorms that carry no adapter, switched to the memory-saving op (fastmma.memory.rmsnorm).

The norm keeps its class's parameters and names; only `forward` changes, through a subclass
swapped in with `__class__` (and swapped back by unpatch / merge).
"""
from __future__ import annotations

from torch import nn

from ..memory import rms_norm
from .class_swap import base_class, restore_forwards, swap_forward

_MARKER = "_fastmma_lean_norm_base"


def is_llama_rms_norm(norm) -> bool:
    """A LLaMA-style RMSNorm (Llama, Mistral, Qwen2): `weight`, `variance_epsilon`, y = w * normalize(x)."""
    return (isinstance(norm, nn.Module) and type(norm).__name__.endswith("RMSNorm")
            and type(norm).__name__ != "MMARMSNorm" and isinstance(getattr(norm, "weight", None), nn.Parameter)
            and hasattr(norm, "variance_epsilon"))


def use_lean_norm(norm: nn.Module) -> bool:
    """Swap `norm` to the input-and-rstd-only forward if it is a LLaMA-style RMSNorm; return whether it was."""
    if base_class(norm, _MARKER) is not None:
        return True
    if not is_llama_rms_norm(norm):
        return False
    swap_forward(norm, _MARKER, "lean", _lean_forward)
    return True


def restore_norms(model: nn.Module) -> None:
    restore_forwards(model, _MARKER)


def _lean_forward(self, hidden_states):
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)
