"""The frozen SwiGLU MLP with the memory-saving product (see fastmma.memory.swiglu).

The MLP keeps its class's parameters and names; only `forward` changes, through a subclass
swapped in with `__class__` (and swapped back by unpatch).

With `recompute_projections` (MMAConfig.recompute_mlp) the gate and up projections and the product
run under a non-reentrant activation checkpoint: the MLP keeps only its input [.., D] for backward
instead of gate and up [.., 2I], and backward recomputes the two projections (two more GEMMs).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..memory import swiglu
from ..memory.layer_recompute import active_stash
from ..memory.swiglu import swiglu_saves_only

_SUBCLASSES: dict[tuple[type, bool], type] = {}


def use_recomputing_swiglu(mlp: nn.Module, recompute_projections: bool = False) -> bool:
    """Swap `mlp` to the recomputing forward if it is a SiLU-gated MLP; return whether it was."""
    is_swiglu = all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj")) and \
        _is_silu(getattr(mlp, "act_fn", None))
    if is_swiglu:
        mlp.__class__ = _subclass_for(type(mlp), recompute_projections)
    return is_swiglu


def _is_silu(module) -> bool:
    """torch's nn.SiLU, or transformers' SiLUActivation (what ACT2FN["silu"] is in transformers 5)."""
    return isinstance(module, nn.SiLU) or (isinstance(module, nn.Module) and type(module).__name__ == "SiLUActivation"
                                           and type(module).__module__.startswith("transformers."))


def is_swiglu_mlp(mlp: nn.Module) -> bool:
    """Whether `mlp` was swapped to the recomputing forward (a SiLU-gated gate/up/down MLP)."""
    return getattr(type(mlp), "_fastmma_base_class", None) is not None


def restore_mlp(mlp: nn.Module) -> None:
    base = getattr(type(mlp), "_fastmma_base_class", None)
    if base is not None:
        mlp.__class__ = base


def _gated_product(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return swiglu(mlp.gate_proj(x), mlp.up_proj(x))                                 # [.., I]


def _forward(self, x):
    stash = active_stash()
    if stash is not None and stash.replaying:              # recompute_attention's replay: gate and up are kept
        return swiglu_saves_only(self.gate_proj(x), self.up_proj(x))
    return self.down_proj(_gated_product(self, x))


def _forward_recomputing_projections(self, x):
    if torch.is_grad_enabled() and x.requires_grad:
        product = checkpoint(_gated_product, self, x, use_reentrant=False, preserve_rng_state=False)
    else:
        product = _gated_product(self, x)
    return self.down_proj(product)


def _subclass_for(base: type, recompute_projections: bool) -> type:
    key = (base, recompute_projections)
    if key not in _SUBCLASSES:
        forward = _forward_recomputing_projections if recompute_projections else _forward
        _SUBCLASSES[key] = type(base.__name__, (base,), {"forward": forward, "_fastmma_base_class": base,
                                                         "__module__": base.__module__})
    return _SUBCLASSES[key]
