"""The patched norm: the frozen RMSNorm with an MMA adapter applied to its output."""
from __future__ import annotations

import torch
from torch import nn

from ..adapters import MMAAdapter
from ..ops import rms_norm_adapter, rms_norm_adapter_folded
from .routing import RoutingContext


class MMARMSNorm(nn.Module):
    """RMSNorm + MMA adapter in one op.

    Keeps the original norm's `weight` Parameter under the same name, so base checkpoints
    still load; adds `adapter.*`. The router weights come from the shared RoutingContext:
    during the modality pass this norm computes them from its own input (the modality
    token), during the main pass it looks up the table that pass filled in.
    """

    def __init__(self, original: nn.Module, adapter: MMAAdapter, routing: RoutingContext, site_index: int):
        super().__init__()
        self.weight = original.weight
        self.variance_epsilon = _norm_eps(original)
        self.adapter = adapter
        self.site_index = site_index
        object.__setattr__(self, "routing", routing)      # shared plain object, not a sub-module

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        folded = self.routing.folded_adapter(self, hidden_states)
        if folded is not None:                                     # generation / evaluation: one kernel call
            return rms_norm_adapter_folded(hidden_states, folded, self.routing.modality_ids)
        router_weights = self.routing.router_weights(self, hidden_states)        # [B, E]
        h_mask = self.adapter.dropout_mask(hidden_states.shape[:-1], hidden_states.dtype, hidden_states.device)
        adapter = self.adapter
        return rms_norm_adapter(hidden_states, self.weight, self.variance_epsilon, adapter.down.weight,
                                adapter.down.bias, adapter.up_weight, adapter.up_bias, router_weights,
                                adapter.scale, h_mask)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


def _norm_eps(norm: nn.Module) -> float:
    for name in ("variance_epsilon", "eps"):
        if hasattr(norm, name):
            return float(getattr(norm, name))
    raise TypeError(f"cannot find the epsilon of norm module {type(norm).__name__}")
