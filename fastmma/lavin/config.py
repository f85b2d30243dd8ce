"""LaVIN's configuration."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..checks import check_fields, is_bool, positive_int
from ..config import MMAConfig, config_from_dict


def _is_str(value) -> bool:
    return isinstance(value, str)


def _is_mma_config(value) -> bool:
    return isinstance(value, MMAConfig)


# field: (test of a valid value, what the value must be, whether None is allowed)
LAVIN_FIELD_RULES = {
    "llm_adapter": (_is_mma_config, "an MMAConfig (or a dict of its fields)", False),
    "vision_adapter": (_is_mma_config, "an MMAConfig (or a dict of its fields)", False),
    "visual_every": (positive_int, "a positive integer", False),
    "visual_hidden": (positive_int, "a positive integer", False),
    "image_prefix": (_is_str, "a string", False),
    "no_image_text": (_is_str, "a string", False),
    "system_prompt": (_is_str, "a string (or None: the chat template's default)", True),
    "standardize_visual_features": (is_bool, "true or false", False),
}


@dataclass
class LaVINConfig:
    """llm_adapter: MMA adapters in the LLM (LaVIN: attention only).
    vision_adapter: MMA adapters in the ViT ("attn" = pre-attention LayerNorm, "ffn" = pre-MLP too);
        they route each image by its own CLS token, so num_modalities is unused there.
    visual_every: take the CLS state after every k-th ViT block (LaVIN: 4, i.e. 6 tokens for 24 blocks).
    visual_hidden: width of the visual adapter MLP Linear(D_vit, h) -> SiLU -> Linear(h, D_llm).
    image_prefix / no_image_text: the text before the visual tokens, and what text-only samples read instead.
    system_prompt: the chat template's system message; None keeps the template's default.
    standardize_visual_features: standardize each tap's CLS features per channel, with statistics fitted
        on the training images before the first step, before the visual adapter (not in LaVIN; for
        frozen encoders whose raw features are badly scaled, such as the demo's random ViT).
    """

    llm_adapter: MMAConfig = field(default_factory=MMAConfig)
    vision_adapter: MMAConfig = field(default_factory=MMAConfig)
    visual_every: int = 4
    visual_hidden: int = 128
    image_prefix: str = "Image: "
    no_image_text: str = "Image: N/A"
    system_prompt: str | None = None
    standardize_visual_features: bool = False

    def __post_init__(self):
        if isinstance(self.llm_adapter, dict):
            self.llm_adapter = MMAConfig.from_dict(self.llm_adapter)
        if isinstance(self.vision_adapter, dict):
            self.vision_adapter = MMAConfig.from_dict(self.vision_adapter)
        check_fields(self, LAVIN_FIELD_RULES)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["llm_adapter"] = self.llm_adapter.to_dict()
        out["vision_adapter"] = self.vision_adapter.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "LaVINConfig":
        return config_from_dict(cls, values)
