"""Plain-PyTorch oracles for the MultiWay-Adapter, restating mwa.md literally.

Each modality has its own way (vision "A", language "B"); the split position chooses it
exactly as torchscale's multiway modules do: -1 = every token is vision, 0 = every token
is text, k > 0 = the first k tokens are vision and the rest text. Per way:

    branch = s * U(hidden_mask * ReLU(A x + a)) + s * u

where x is the residual stream (the FFN's un-normalized input). The encoder layer adds
`branch` next to its FFN output, y = x + FFN_way(LN_way(x)) + branch, and then the
Alignment Enhancer, shared by both modalities: out = y + AE(y).
"""
from __future__ import annotations

import torch

VISION_WAY = 0
LANGUAGE_WAY = 1


def nke_way_reference(x, down_weight, down_bias, up_weight, up_bias, scale, hidden_mask=None):
    """One way's branch. x [B, T, D]; down_weight [r, D]; up_weight [D, r]; hidden_mask [B, T, r] or None."""
    hidden = torch.relu(x @ down_weight.T + down_bias)                             # [B, T, r]
    if hidden_mask is not None:
        hidden = hidden * hidden_mask
    return scale * (hidden @ up_weight.T) + scale * up_bias                        # [B, T, D]


def nke_reference(x, split_position, down_weight, down_bias, up_weight, up_bias, scale, hidden_mask=None):
    """The NKE branch of a whole sequence. x [B, L, D]; the weights stack the ways: down_weight [2, r, D],
    down_bias [2, r], up_weight [2, D, r], up_bias [2, D]; hidden_mask [B, L, r] or None."""
    def way(index, tokens, mask):
        return nke_way_reference(tokens, down_weight[index], down_bias[index], up_weight[index], up_bias[index],
                                 scale, mask)

    if split_position == -1:
        return way(VISION_WAY, x, hidden_mask)
    if split_position == 0:
        return way(LANGUAGE_WAY, x, hidden_mask)
    vision_tokens, text_tokens = x[:, :split_position], x[:, split_position:]
    vision_mask = text_mask = None
    if hidden_mask is not None:
        vision_mask, text_mask = hidden_mask[:, :split_position], hidden_mask[:, split_position:]
    return torch.cat([way(VISION_WAY, vision_tokens, vision_mask), way(LANGUAGE_WAY, text_tokens, text_mask)], dim=1)


def alignment_enhancer_reference(y, down_weight, down_bias, up_weight, up_bias):
    """The shared enhancer after the FFN's residual add: y + W_up GELU(W_down y + b_down) + b_up. y [B, L, D]."""
    hidden = torch.nn.functional.gelu(y @ down_weight.T + down_bias)               # [B, L, r_ae]
    return y + hidden @ up_weight.T + up_bias
