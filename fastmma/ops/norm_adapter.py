"""RMSNorm followed by the MMA adapter, as one op with pluggable backends.

    n = RMSNorm(x) * norm_weight
    h = (A n + a) * h_mask                                    # [rows, r]; h_mask = dropout multipliers or None
    y = n + U_eff[b] h + c_eff[b]                             # U_eff = scale * sum_e w[b, e] U_e (block-diagonal)

Two routing forms share the op:
- `rms_norm_adapter`: per-sample router weights [B, E] (MMA / LaVIN);
- `rms_norm_adapter_by_expert`: a per-token expert id [B, L] (MultiWay: one expert per modality).
A third, inference-only form takes the router already folded into per-table U_eff/c_eff
(`rms_norm_adapter_folded`, built by `fold_tables`): no autograd, for generation and evaluation.

Backends ("reference", "torch", and "triton"/"cpp" when registered) take the same
arguments and return y [B, L, D] in x's dtype; autograd flows through every input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import reference
from . import backend

OP_PER_SAMPLE = "rms_norm_adapter"
OP_PER_TOKEN = "rms_norm_adapter_by_expert"
OP_ADAPTER_ONLY = "mma_adapter"
OP_FOLDED = "rms_norm_adapter_folded"


def rms_norm_adapter(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias, router_weights, scale,
                     h_mask=None):
    """x [B, L, D], router_weights [B, E] -> y [B, L, D]. See the module docstring."""
    _, impl = backend.resolve(OP_PER_SAMPLE, x.device.type)
    return impl(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias, router_weights, scale, h_mask)


def rms_norm_adapter_by_expert(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias, expert_ids, scale,
                               h_mask=None):
    """x [B, L, D], expert_ids [B, L] (int) -> y [B, L, D]. See the module docstring."""
    _, impl = backend.resolve(OP_PER_TOKEN, x.device.type)
    return impl(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias, expert_ids, scale, h_mask)


def mma_adapter(normed, down_weight, down_bias, up_weight, up_bias, router_weights, scale, h_mask=None):
    """The adapter alone on an already-normalized input (e.g. a ViT's LayerNorm output): normed [B, L, D]."""
    _, impl = backend.resolve(OP_ADAPTER_ONLY, normed.device.type)
    return impl(normed, down_weight, down_bias, up_weight, up_bias, router_weights, scale, h_mask)


def routed_up_projection(router_weights, up_weight, up_bias, scale, dtype):
    """The experts mixed by router_weights [N, E], in `dtype`, scale included; differentiable.

    Returns U_eff [N, D, r/G] = scale * sum_e w[n, e] U_e and c_eff [N, D] = scale * w[n] @ c.
    """
    weights = router_weights.to(dtype)                                                   # [N, E]
    up_eff = scale * mix_experts(weights, up_weight.to(dtype))                           # [N, D, r/G]
    bias_eff = scale * mix_experts(weights, up_bias.to(dtype))                           # [N, D]
    return up_eff, bias_eff


def mix_experts(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """sum_e weights[n, e] * experts[e]: weights [N, E], experts [E, ...] -> [N, ...].

    As element-wise products over the few experts rather than a GEMM with E-long rows: on CPU these run on
    the calling thread, where a GEMM of this size pays for waking the BLAS threads (about 5x the time of
    the whole forward and backward, measured at N=4, E=2, D=576)."""
    per_row = weights.reshape(weights.shape + (1,) * (experts.dim() - 1))               # [N, E, 1, ...]
    mixed = per_row[:, 0] * experts[0]
    for expert in range(1, experts.shape[0]):
        mixed = mixed + per_row[:, expert] * experts[expert]
    return mixed


def rms_norm_adapter_folded(x, folded, table_ids):
    """Inference only: x [B, L, D], `folded` from `fold_tables`, table_ids [B] (int) -> y [B, L, D]."""
    _, impl = backend.resolve(OP_FOLDED, x.device.type)
    return impl(x, folded, table_ids)


class FoldedAdapter:
    """RMSNorm + adapter parameters with the router folded in, one table per routing choice.

    norm_weight [D], down_weight [r, D], down_bias [r]: in the accumulation dtype;
    up_table [T, r/G, D] = scale * sum_e w[t, e] U_e (transposed), bias_table [T, D] = scale * w[t] @ c.
    """

    def __init__(self, norm_weight, eps, down_weight, down_bias, up_table, bias_table):
        self.norm_weight = norm_weight
        self.eps = float(eps)
        self.down_weight = down_weight
        self.down_bias = down_bias
        self.up_table = up_table
        self.bias_table = bias_table


@torch.no_grad()
def fold_tables(norm_weight, eps, down_weight, down_bias, up_weight, up_bias, router_table, scale,
                dtype=torch.float32) -> FoldedAdapter:
    """Fold router_table [T, E] (e.g. one row per modality) into a FoldedAdapter in `dtype`."""
    up_eff, bias_table = routed_up_projection(router_table, up_weight, up_bias, scale, dtype)   # [T, D, r/G], [T, D]
    return FoldedAdapter(norm_weight.to(dtype), eps, down_weight.to(dtype), down_bias.to(dtype),
                         up_eff.transpose(1, 2).contiguous(), bias_table.contiguous())


def torch_rms_norm_adapter_folded(x, folded: FoldedAdapter, table_ids):
    compute = folded.up_table.dtype
    normed = reference.rms_norm_reference(x.to(compute), folded.norm_weight, folded.eps)   # [B, L, D]
    h = F.linear(normed, folded.down_weight, folded.down_bias)                             # [B, L, r]
    up_eff = folded.up_table[table_ids].transpose(1, 2)                                    # [B, D, r/G]
    y = normed + _grouped_up(h, up_eff) + folded.bias_table[table_ids][:, None, :]
    return y.to(x.dtype)


def _down(normed, down_weight, down_bias, h_mask):
    h = F.linear(normed, down_weight.to(normed.dtype), down_bias.to(normed.dtype))   # [B, L, r]
    return h if h_mask is None else h * h_mask.to(h.dtype)


def _grouped_up(h, up_weight):
    """Block-diagonal up-projection without its bias.

    h [B, L, r]; up_weight [D, r/G] shared by the batch, or [B, D, r/G] per sample.
    Returns [B, L, D].
    """
    batch, length, rank = h.shape
    hidden, rank_per_group = up_weight.shape[-2:]
    groups = rank // rank_per_group
    h_grouped = h.reshape(batch, length, groups, rank_per_group)                  # [B, L, G, r/G]
    up_grouped = up_weight.reshape(*up_weight.shape[:-2], groups, hidden // groups, rank_per_group)
    if up_weight.dim() == 2:
        out = torch.einsum("blgk,gdk->blgd", h_grouped, up_grouped)
    else:
        out = torch.einsum("blgk,bgdk->blgd", h_grouped, up_grouped)
    return out.reshape(batch, length, hidden)


def torch_mma_adapter(normed, down_weight, down_bias, up_weight, up_bias, router_weights, scale, h_mask=None):
    h = _down(normed, down_weight, down_bias, h_mask)                              # [B, L, r]
    up_eff, bias_eff = routed_up_projection(router_weights, up_weight, up_bias, scale, normed.dtype)  # [B, D, r/G]
    return normed + _grouped_up(h, up_eff) + bias_eff[:, None, :]


def torch_rms_norm_adapter(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias, router_weights, scale,
                           h_mask=None):
    normed = reference.rms_norm_reference(x, norm_weight, eps)                  # [B, L, D]
    return torch_mma_adapter(normed, down_weight, down_bias, up_weight, up_bias, router_weights, scale, h_mask)


def torch_rms_norm_adapter_by_expert(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias, expert_ids,
                                     scale, h_mask=None):
    normed = reference.rms_norm_reference(x, norm_weight, eps)                  # [B, L, D]
    h = _down(normed, down_weight, down_bias, h_mask)                              # [B, L, r]
    out = normed
    for expert in range(up_weight.shape[0]):
        chosen = (expert_ids == expert).to(normed.dtype)[..., None]               # [B, L, 1]
        branch = _grouped_up(h, up_weight[expert].to(normed.dtype)) + up_bias[expert].to(normed.dtype)
        out = out + scale * chosen * branch
    return out


backend.register(OP_PER_SAMPLE, "torch", torch_rms_norm_adapter)
backend.register(OP_PER_SAMPLE, "reference", reference.norm_adapter_reference)
backend.register(OP_PER_TOKEN, "torch", torch_rms_norm_adapter_by_expert)
backend.register(OP_PER_TOKEN, "reference", reference.norm_adapter_by_expert_reference)
backend.register(OP_ADAPTER_ONLY, "torch", torch_mma_adapter)
backend.register(OP_FOLDED, "torch", torch_rms_norm_adapter_folded)
backend.register(OP_ADAPTER_ONLY, "reference", reference.mma_adapter_reference)
