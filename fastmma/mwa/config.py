"""MWAConfig: the MultiWay-Adapter settings."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..config import config_from_dict


@dataclass
class MWAConfig:
    """MultiWay-Adapter settings (the paper's defaults for BEiT-3 Base).

    rank: width r of each New Knowledge Extractor (NKE), the per-modality bottleneck
        parallel to every encoder layer's multiway FFN.
    scale: s in out = x + FFN_way(LN_way(x)) + s * U(dropout(ReLU(A x + a))) + s * u
        (the published Large recipe uses 0.6).
    dropout: dropout probability on the NKE's hidden activation during training.
    enhancer: add the Alignment Enhancer, a bottleneck shared by both modalities applied
        after each FFN residual add: x = x + AE(x).
    enhancer_rank: the Alignment Enhancer's width r_ae. None means hidden_size // 4 of the
        host, which puts NKE + AE at 2.7% extra parameters for BEiT-3 Base and 2.8% for
        Large, the 2-3% the paper reports.
    """

    rank: int = 64
    scale: float = 0.1
    dropout: float = 0.1
    enhancer: bool = True
    enhancer_rank: int | None = None

    def __post_init__(self):
        _require(_is_positive_int(self.rank), "rank", f"must be a positive integer, got {self.rank!r}")
        _require(_is_real(self.scale) and math.isfinite(self.scale) and self.scale > 0, "scale",
                 f"must be a finite number > 0, got {self.scale!r}")
        _require(_is_real(self.dropout) and 0.0 <= self.dropout < 1.0, "dropout",
                 f"must be in [0, 1), got {self.dropout!r}")
        _require(isinstance(self.enhancer, bool), "enhancer", f"must be True or False, got {self.enhancer!r}")
        _require(self.enhancer_rank is None or _is_positive_int(self.enhancer_rank), "enhancer_rank",
                 f"must be None (hidden_size // 4) or a positive integer, got {self.enhancer_rank!r}")
        _require(self.enhancer or self.enhancer_rank is None, "enhancer_rank",
                 f"is {self.enhancer_rank} but enhancer=False; set enhancer=True or leave enhancer_rank=None")

    def resolved_enhancer_rank(self, hidden_size: int) -> int:
        """The Alignment Enhancer's width for a host of this hidden size."""
        return self.enhancer_rank if self.enhancer_rank is not None else max(1, hidden_size // 4)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "MWAConfig":
        return config_from_dict(cls, values)


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"MWAConfig.{field_name}: {message}")
