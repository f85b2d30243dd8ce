"""The Mixture-of-Modality adapter's parameters (LaVIN's "RepAdapter with router").

    router_weights = softmax((W_r n_mod + b_r) / temperature)        # [B, E]
    h = dropout(A n + a)                                              # [rows, r]
    y = n + scale * sum_e router_weights[:, e] * (U_e h + c_e)        # U_e block-diagonal

The math itself lives in `fastmma.ops.norm_adapter`; this module only owns the
parameters, their initialisation and the router.
"""
from __future__ import annotations


import torch
from torch import nn

from ..config import MMAConfig
from ..ops.norm_adapter import routed_up_projection


class MMAAdapter(nn.Module):
    """Parameters of one MMA adapter over a width-`hidden_size` activation.

    down.weight [r, D], down.bias [r]: the shared down-projection A, a.
    up_weight [E, D, r/G]: expert up-projections, block-diagonal with G groups
        (output channel d reads h[g*r/G:(g+1)*r/G] with g = d // (D/G)), the
        layout of LaVIN's grouped 1x1 Conv1d weight without its trailing 1.
    up_bias [E, D]: expert biases c_e.
    router.weight [E, D], router.bias [E]: the modality router.
    """

    def __init__(self, hidden_size: int, config: MMAConfig):
        super().__init__()
        config.check_hidden_size(hidden_size)
        self.hidden_size = hidden_size
        self.rank = config.rank
        self.groups = config.groups
        self.experts = config.experts
        self.scale = config.scale
        self.temperature = config.temperature
        self.dropout = config.dropout
        self.down = nn.Linear(hidden_size, config.rank)
        self.up_weight = nn.Parameter(torch.zeros(config.experts, hidden_size, config.rank // config.groups))
        self.up_bias = nn.Parameter(torch.zeros(config.experts, hidden_size))
        self.router = nn.Linear(hidden_size, config.experts)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LaVIN's init: A xavier-uniform, a = 0, U_e = c_e = 0 (identity), router PyTorch default."""
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up_weight)
        nn.init.zeros_(self.up_bias)
        self.router.reset_parameters()

    def router_weights(self, modality_state: torch.Tensor) -> torch.Tensor:
        """Softmax router weights [..., E] (fp32) from the modality token's normalized state [..., D]."""
        logits = self.router(modality_state.to(self.router.weight.dtype))
        return torch.softmax(logits / self.temperature, dim=-1)

    @property
    def applies_dropout(self) -> bool:
        return self.training and self.dropout > 0.0

    def dropout_mask(self, rows_shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor | None:
        """Inverted-dropout multipliers for h, shape [*rows_shape, r], or None when dropout is off."""
        if not self.applies_dropout:
            return None
        keep = torch.rand(*rows_shape, self.rank, device=device) >= self.dropout
        return keep.to(dtype) / (1.0 - self.dropout)

    def effective_up(self, router_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router-resolved up-projection for each row of router_weights [N, E].

        Returns U_eff [N, D, r/G] and c_eff [N, D], already multiplied by `scale`.
        """
        return routed_up_projection(router_weights, self.up_weight, self.up_bias, self.scale, self.up_weight.dtype)

    def extra_repr(self) -> str:
        return (f"hidden={self.hidden_size}, rank={self.rank}, groups={self.groups}, experts={self.experts}, "
                f"scale={self.scale}, temperature={self.temperature}, dropout={self.dropout}")


def dense_block_diagonal(up_compact: torch.Tensor, groups: int) -> torch.Tensor:
    """Expand a compact block-diagonal up-projection [..., D, r/G] to dense [..., D, r]."""
    *lead, hidden, rank_per_group = up_compact.shape
    rows_per_group = hidden // groups
    dense = up_compact.new_zeros(*lead, hidden, rank_per_group * groups)
    for g in range(groups):
        rows = slice(g * rows_per_group, (g + 1) * rows_per_group)
        cols = slice(g * rank_per_group, (g + 1) * rank_per_group)
        dense[..., rows, cols] = up_compact[..., rows, :]
    return dense


