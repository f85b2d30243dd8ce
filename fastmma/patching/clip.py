"""MMA adapters inside a frozen Hugging Face CLIP vision tower (LaVIN's ViT adapters).

One adapter on the output of every block's pre-attention LayerNorm (optionally also the
pre-MLP one). Each image is routed by its own CLS token (token 0 of that image's
normalized sequence) — not by batch element 0's tokens, which is what LaVIN's
sequence-first code reads by mistake.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import MMAAdapter
from ..config import MMAConfig
from ..ops import mma_adapter

VIT_NORM_ATTRS = {"attn": "layer_norm1", "ffn": "layer_norm2"}


class MMALayerNorm(nn.Module):
    """A frozen LayerNorm followed by an MMA adapter routed by each sample's token 0.

    Keeps the LayerNorm's `weight` and `bias` under their original names.
    """

    def __init__(self, original: nn.LayerNorm, adapter: MMAAdapter):
        super().__init__()
        self.weight = original.weight
        self.bias = original.bias
        self.eps = original.eps
        self.normalized_shape = original.normalized_shape
        self.adapter = adapter
        object.__setattr__(self, "original", original)    # kept for unpatching, not a sub-module

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(hidden_states, self.normalized_shape, self.weight, self.bias, self.eps)  # [N, T, D]
        router_weights = self.adapter.router_weights(normed[:, 0])                     # [N, E], own CLS
        h_mask = self.adapter.dropout_mask(normed.shape[:-1], normed.dtype, normed.device)
        adapter = self.adapter
        return mma_adapter(normed, adapter.down.weight, adapter.down.bias, adapter.up_weight, adapter.up_bias,
                           router_weights, adapter.scale, h_mask)


def vision_transformer(vision_model: nn.Module) -> nn.Module:
    """The module holding embeddings / pre_layrnorm / encoder (CLIPVisionModel keeps them at top level
    in transformers 5; older layouts nest them under `vision_model`)."""
    inner = getattr(vision_model, "vision_model", vision_model)
    for name in ("embeddings", "pre_layrnorm", "encoder"):
        if not hasattr(inner, name):
            raise TypeError(f"expected a Hugging Face CLIPVisionModel; {type(vision_model).__name__} has no `{name}`")
    return inner


def patch_vision(vision_model: nn.Module, config: MMAConfig) -> list[MMALayerNorm]:
    """Freeze the vision tower and add an adapter after each targeted LayerNorm of every block."""
    if any(isinstance(m, MMALayerNorm) for m in vision_model.modules()):
        raise RuntimeError("this vision model already has fastmma adapters")
    tower = vision_transformer(vision_model)
    hidden_size = tower.embeddings.patch_embedding.out_channels
    config.check_hidden_size(hidden_size)
    device = tower.embeddings.patch_embedding.weight.device
    for p in vision_model.parameters():
        p.requires_grad_(False)
    patched = []
    for layer in tower.encoder.layers:
        for target in config.targets:
            attr = VIT_NORM_ATTRS[target]
            adapter = MMAAdapter(hidden_size, config).to(device=device, dtype=torch.float32)
            module = MMALayerNorm(getattr(layer, attr), adapter)
            setattr(layer, attr, module)
            patched.append(module)
    return patched


def unpatch_vision(vision_model: nn.Module) -> nn.Module:
    for layer in vision_transformer(vision_model).encoder.layers:
        for attr in VIT_NORM_ATTRS.values():
            module = getattr(layer, attr)
            if isinstance(module, MMALayerNorm):
                setattr(layer, attr, module.original)
    return vision_model


def cls_features(vision_model: nn.Module, pixel_values: torch.Tensor, every: int) -> torch.Tensor:
    """CLS states [N, num_layers // every, D_vit] after blocks every, 2*every, ... (before any final norm)."""
    tower = vision_transformer(vision_model)
    layers = tower.encoder.layers
    if not 1 <= every <= len(layers):
        raise ValueError(f"visual_every={every} must be between 1 and the ViT's {len(layers)} blocks")
    dtype = tower.embeddings.patch_embedding.weight.dtype
    hidden = tower.pre_layrnorm(tower.embeddings(pixel_values.to(dtype)))                 # [N, T, D_vit]
    taps = []
    for index, layer in enumerate(layers[: (len(layers) // every) * every], start=1):
        hidden = layer(hidden, None)
        if index % every == 0:
            taps.append(hidden[:, 0])
    return torch.stack(taps, dim=1)
