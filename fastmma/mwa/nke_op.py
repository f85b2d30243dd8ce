"""The New Knowledge Extractor branch for a per-token modality id, in plain PyTorch.

    branch[t] = s * U_m (hidden_mask[t] * ReLU(A_m x[t] + a_m)) + s * u_m,   m = modality_ids[t]

The tokens are gathered by modality (one stable sort), each modality's tokens go through
their way's two GEMMs as one contiguous block, and the results are scattered back. A
sequence of a single modality (the dual-encoder case) skips the gather and the scatter.
The op is nonlinear (ReLU) and reads the residual stream, not a norm's output, so it is
separate from fastmma.ops.norm_adapter's per-token expert-id op.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def multiway_nke(x, modality_ids, down_weight, down_bias, up_weight, up_bias, scale, hidden_mask=None):
    """x [B, L, D], modality_ids [B, L] (int in [0, M)) -> branch [B, L, D] in x's dtype.

    down_weight [M, r, D], down_bias [M, r], up_weight [M, D, r], up_bias [M, D];
    hidden_mask [B, L, r] (dropout multipliers) or None.
    """
    batch, length, hidden_size = x.shape
    tokens = x.reshape(batch * length, hidden_size)                                # [N, D]
    token_modalities = modality_ids.reshape(-1)                                    # [N]
    token_masks = None if hidden_mask is None else hidden_mask.reshape(batch * length, -1)   # [N, r]
    counts = torch.bincount(token_modalities, minlength=down_weight.shape[0]).tolist()
    ways = (down_weight, down_bias, up_weight, up_bias)

    if max(counts) == tokens.shape[0]:
        modality = counts.index(tokens.shape[0])
        branch = _way(tokens, *(w[modality] for w in ways), scale, token_masks)
        return branch.reshape(batch, length, hidden_size)

    order = token_modalities.argsort(stable=True)                                  # [N] tokens grouped by modality
    grouped_tokens = tokens.index_select(0, order).split(counts)
    grouped_masks = (None,) * len(counts) if token_masks is None else token_masks.index_select(0, order).split(counts)
    grouped_branch = torch.cat([
        _way(block, *(w[modality] for w in ways), scale, masks)
        for modality, (block, masks) in enumerate(zip(grouped_tokens, grouped_masks)) if counts[modality]
    ])                                                                             # [N, D], grouped order
    branch = tokens.new_empty(tokens.shape).index_copy(0, order, grouped_branch)   # [N, D], token order
    return branch.reshape(batch, length, hidden_size)


def _way(tokens, down_weight, down_bias, up_weight, up_bias, scale, masks):
    """One modality's bottleneck on its tokens [N_m, D] -> [N_m, D]."""
    dtype = tokens.dtype
    hidden = F.relu(F.linear(tokens, down_weight.to(dtype), down_bias.to(dtype)))   # [N_m, r]
    if masks is not None:
        hidden = hidden * masks.to(dtype)
    return scale * F.linear(hidden, up_weight.to(dtype), up_bias.to(dtype))
