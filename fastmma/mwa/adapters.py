"""The two MultiWay-Adapter modules added to every BEiT-3 encoder layer."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .nke_op import multiway_nke
from .reference import LANGUAGE_WAY, VISION_WAY

NUM_WAYS = 2


class MultiwayNKE(nn.Module):
    """New Knowledge Extractor: one ReLU bottleneck per modality, parallel to the multiway FFN.

    Way 0 serves vision tokens and way 1 text tokens, like torchscale's A/B ways. torchscale
    sets `split_position` on every module that has one before each forward, so this module
    routes exactly as the FFN it runs beside. Identity at init: U and both biases are zero.
    """

    def __init__(self, hidden_size: int, rank: int, scale: float, dropout: float):
        super().__init__()
        self.scale = scale
        self.dropout = dropout
        self.split_position = -1
        self.down_weight = nn.Parameter(torch.empty(NUM_WAYS, rank, hidden_size))   # A per way
        self.down_bias = nn.Parameter(torch.zeros(NUM_WAYS, rank))                  # a per way
        self.up_weight = nn.Parameter(torch.zeros(NUM_WAYS, hidden_size, rank))     # U per way
        self.up_bias = nn.Parameter(torch.zeros(NUM_WAYS, hidden_size))             # u per way
        for way in range(NUM_WAYS):
            nn.init.kaiming_uniform_(self.down_weight[way], a=math.sqrt(5))

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        """residual [B, L, D] (the FFN's un-normalized input) -> the branch added beside the FFN [B, L, D]."""
        batch, length, _ = residual.shape
        modality_ids = modality_ids_for_split(self.split_position, batch, length, residual.device)   # [B, L]
        return multiway_nke(residual, modality_ids, self.down_weight, self.down_bias, self.up_weight,
                            self.up_bias, self.scale, self._hidden_mask(batch, length, residual))

    def _hidden_mask(self, batch: int, length: int, like: torch.Tensor) -> torch.Tensor | None:
        if not self.training or self.dropout == 0.0:
            return None
        keep = 1.0 - self.dropout
        rank = self.down_weight.shape[1]
        return like.new_empty(batch, length, rank).bernoulli_(keep).div_(keep)      # [B, L, r]

    def extra_repr(self) -> str:
        ways, rank, hidden_size = self.down_weight.shape
        return f"ways={ways}, hidden_size={hidden_size}, rank={rank}, scale={self.scale}, dropout={self.dropout}"


class AlignmentEnhancer(nn.Module):
    """A GELU bottleneck D -> r_ae -> D shared by both modalities, applied as x + AE(x) after the FFN.

    The output projection starts at zero, so the enhancer starts as the identity.
    """

    def __init__(self, hidden_size: int, rank: int):
        super().__init__()
        self.down = nn.Linear(hidden_size, rank)
        self.up = nn.Linear(rank, hidden_size)
        nn.init.trunc_normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] -> AE(x) [B, L, D] (the caller adds it to x)."""
        dtype = x.dtype
        hidden = F.gelu(F.linear(x, self.down.weight.to(dtype), self.down.bias.to(dtype)))   # [B, L, r_ae]
        return F.linear(hidden, self.up.weight.to(dtype), self.up.bias.to(dtype))


def modality_ids_for_split(split_position: int, batch: int, length: int, device) -> torch.Tensor:
    """The way of every token [B, L]: -1 -> all vision, 0 -> all text, k > 0 -> k vision tokens, then text."""
    if not -1 <= split_position <= length:
        raise ValueError(f"multiway split position {split_position} is outside [-1, {length}] for a sequence of "
                         f"{length} tokens")
    first_text_position = length if split_position == -1 else split_position
    positions = torch.arange(length, device=device)                                # [L]
    ids = torch.where(positions >= first_text_position, LANGUAGE_WAY, VISION_WAY)  # [L]
    return ids.expand(batch, length)
