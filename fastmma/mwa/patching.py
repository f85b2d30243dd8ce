"""Patch / unpatch torchscale's BEiT-3 with the MultiWay-Adapter; merge is impossible and says why.

Each encoder layer gains two submodules, `mwa_nke` and (optionally) `mwa_enhancer`, and
two forward hooks; no torchscale module is replaced, so the backbone's parameter names,
and its forward code, stay as they are:

- a pre-hook on the layer's `final_layer_norm` reads its input, the residual stream x
  that the FFN block starts from, and computes the NKE branch on it;
- a hook on the layer's output (x + FFN_way(LN_way(x))) adds that branch and then the
  Alignment Enhancer: out = y + AE(y), y = x + FFN_way(LN_way(x)) + NKE_way(x).

The NKE joins after the layer's drop-path, so stochastic depth drops only the FFN.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .adapters import AlignmentEnhancer, MultiwayNKE
from .beit3 import check_beit3_host
from .config import MWAConfig

METHOD = "mwa"
NKE_NAME = "mwa_nke"
ENHANCER_NAME = "mwa_enhancer"


@dataclass
class LayerSite:
    """The adapters of one encoder layer, and the NKE branch waiting between the two hooks."""

    layer: nn.Module
    nke: MultiwayNKE
    enhancer: AlignmentEnhancer | None
    hooks: list[RemovableHandle] = field(default_factory=list)
    pending_branch: torch.Tensor | None = None

    def compute_branch(self, _final_layer_norm, args):
        self.pending_branch = self.nke(args[0])                                    # [B, L, D]

    def add_to_layer_output(self, _layer, _args, output):
        hidden, aux = output
        if self.pending_branch is None:
            raise RuntimeError("the MultiWay-Adapter's NKE did not run in this encoder layer: its final_layer_norm "
                               "was not called before the layer returned")
        hidden = hidden + self.pending_branch
        self.pending_branch = None
        if self.enhancer is not None:
            hidden = hidden + self.enhancer(hidden)
        return hidden, aux


@dataclass
class MWAState:
    """What fastmma keeps on a patched BEiT-3 (as the plain attribute `model._fastmma`)."""

    config: MWAConfig
    sites: list[LayerSite]
    requires_grad_before: dict[str, bool]
    method: str = METHOD


def patch(model: nn.Module, config: MWAConfig) -> nn.Module:
    """Add an NKE beside every encoder layer's FFN (and the Alignment Enhancer); freeze the backbone."""
    if getattr(model, "_fastmma", None) is not None:
        raise RuntimeError("this model is already patched by fastmma; call fastmma.unpatch(model) first")
    check_beit3_host(model)
    _check_no_activation_checkpointing(model)
    requires_grad_before = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    sites = [_patch_layer(layer, config, model.args.encoder_embed_dim) for layer in model.encoder.layers]
    object.__setattr__(model, "_fastmma", MWAState(config, sites, requires_grad_before))
    return model


def _patch_layer(layer: nn.Module, config: MWAConfig, hidden_size: int) -> LayerSite:
    device = next(layer.parameters()).device
    nke = MultiwayNKE(hidden_size, config.rank, config.scale, config.dropout).to(device)
    enhancer = AlignmentEnhancer(hidden_size, config.resolved_enhancer_rank(hidden_size)).to(device) \
        if config.enhancer else None
    layer.add_module(NKE_NAME, nke.train(layer.training))
    if enhancer is not None:
        layer.add_module(ENHANCER_NAME, enhancer.train(layer.training))
    site = LayerSite(layer, nke, enhancer)
    site.hooks.append(layer.final_layer_norm.register_forward_pre_hook(site.compute_branch))
    site.hooks.append(layer.register_forward_hook(site.add_to_layer_output))
    return site


def _check_no_activation_checkpointing(model: nn.Module) -> None:
    if model.args.checkpoint_activations:
        raise ValueError("this BEiT3 checkpoints its encoder layers (checkpoint_activations=True), which runs the "
                         "layer without gradients before recomputing it; build it with "
                         "checkpoint_activations=False, or checkpoint the whole patched model with "
                         "torch.utils.checkpoint.checkpoint(..., use_reentrant=False)")


def unpatch(model: nn.Module) -> nn.Module:
    """Remove every MWA module and hook, and restore the backbone's requires_grad flags."""
    state = require_mwa(model, "unpatch")
    for site in state.sites:
        for hook in site.hooks:
            hook.remove()
        delattr(site.layer, NKE_NAME)
        if site.enhancer is not None:
            delattr(site.layer, ENHANCER_NAME)
    for name, p in model.named_parameters():
        p.requires_grad_(state.requires_grad_before.get(name, p.requires_grad))
    object.__delattr__(model, "_fastmma")
    return model


def merge(model: nn.Module, **_ignored) -> nn.Module:
    require_mwa(model, "merge")
    raise TypeError("MultiWay-Adapter modules cannot be merged into BEiT-3's weights: the New Knowledge "
                    "Extractor is nonlinear (ReLU) and the Alignment Enhancer is a GELU bottleneck. Keep the "
                    "model patched for inference, or call fastmma.unpatch(model) to get the base model back")


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The MWA parameters of a patched BEiT-3, by their names in `model`."""
    require_mwa(model, "adapter_parameters")
    markers = (f".{NKE_NAME}.", f".{ENHANCER_NAME}.")
    return {name: p for name, p in model.named_parameters() if any(marker in name for marker in markers)}


def require_mwa(model: nn.Module, action: str) -> MWAState:
    state = getattr(model, "_fastmma", None)
    if getattr(state, "method", None) != METHOD:
        raise RuntimeError(f"fastmma.{action} here needs a BEiT-3 patched with fastmma.patch(model, MWAConfig(...)); "
                           f"this model is not")
    return state
