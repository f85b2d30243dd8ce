"""The host model: torchscale's BEiT-3, an optional dependency imported only when needed."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ._timm_shim import installed_if_timm_missing

TORCHSCALE_INSTALL = "pip install --no-deps torchscale==0.3.0 fairscale==0.4.0"


def torchscale_classes() -> tuple[type, type]:
    """(BEiT3, EncoderConfig) from torchscale, with a stand-in for timm when timm cannot import."""
    try:
        with installed_if_timm_missing():
            from torchscale.architecture.config import EncoderConfig
            from torchscale.model.BEiT3 import BEiT3
    except ImportError as err:
        raise ImportError(f"MultiWay-Adapter patches torchscale's BEiT-3, which is not installed ({err}); "
                          f"install it with `{TORCHSCALE_INSTALL}`") from err
    return BEiT3, EncoderConfig


@dataclass(frozen=True)
class BEiT3Dims:
    """The sizes that define a BEiT-3 encoder."""

    embed_dim: int
    layers: int
    heads: int
    ffn_dim: int
    img_size: int
    patch_size: int
    vocab_size: int
    max_source_positions: int = 1024     # text position table rows; torchscale's positions start at 2


BEIT3_BASE = BEiT3Dims(embed_dim=768, layers=12, heads=12, ffn_dim=3072, img_size=224, patch_size=16,
                       vocab_size=64010)
BEIT3_LARGE = BEiT3Dims(embed_dim=1024, layers=24, heads=16, ffn_dim=4096, img_size=224, patch_size=16,
                        vocab_size=64010)


def build_beit3(dims: BEiT3Dims, drop_path_rate: float = 0.0) -> nn.Module:
    """A randomly initialised BEiT-3 (multiway, pre-LN, no output layer) of the given sizes."""
    BEiT3, EncoderConfig = torchscale_classes()
    config = EncoderConfig(
        encoder_embed_dim=dims.embed_dim, encoder_layers=dims.layers, encoder_attention_heads=dims.heads,
        encoder_ffn_embed_dim=dims.ffn_dim, img_size=dims.img_size, patch_size=dims.patch_size,
        vocab_size=dims.vocab_size, max_source_positions=dims.max_source_positions, multiway=True,
        layernorm_embedding=False, normalize_output=True, no_output_layer=True, drop_path_rate=drop_path_rate)
    return BEiT3(config)


def check_beit3_host(model: nn.Module) -> None:
    """Raise one clear error if `model` is not a BEiT-3 the MultiWay-Adapter can be laid over."""
    BEiT3, _ = torchscale_classes()
    if not isinstance(model, BEiT3):
        raise TypeError(f"fastmma.patch with an MWAConfig takes torchscale's BEiT3 model "
                        f"(torchscale.model.BEiT3.BEiT3); got {type(model).__name__}")
    if not model.args.encoder_normalize_before:
        raise ValueError("this BEiT3 is post-LN (encoder_normalize_before=False, e.g. deepnorm=True); the "
                         "MultiWay-Adapter is defined on the pre-LN encoder: build it with "
                         "encoder_normalize_before=True (BEiT-3's own configs use subln=True, which implies it)")
    for index, layer in enumerate(model.encoder.layers):
        if getattr(layer, "is_moe_layer", False):
            raise ValueError(f"encoder layer {index} is a mixture-of-experts layer; the MultiWay-Adapter needs "
                             f"the multiway FFN in every layer (build BEiT3 with moe_freq=0)")


def beit3_description(model: nn.Module) -> dict:
    """What a saved adapter records about its host, checked again on load."""
    return {"model_type": "beit3", "hidden_size": model.args.encoder_embed_dim,
            "num_hidden_layers": len(model.encoder.layers)}

