"""fastmma.patch / fastmma.unpatch for decoder-only causal LMs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..adapters import MMAAdapter
from ..config import MMAConfig
from . import llama  # noqa: F401  (registers the LLaMA-layout families)
from .methods import handler_for_config, handler_for_model
from .attention import apply_attn_implementation, set_attn_implementation
from .autocast_weights import restore_autocast_weights, use_autocast_weight_cache
from .layer_recompute import restore_layer_recompute, use_layer_recompute
from .lean_norm import restore_norms, use_lean_norm
from .rotary_attention import restore_fused_rotary, use_fused_rotary
from .model_class import original_class, patched_class_for
from .mlp import restore_mlp, use_recomputing_swiglu
from .norm import MMARMSNorm
from .registry import DecoderFamily, family_for
from .routing import RoutingContext

MODALITY_EMBEDDING_NAME = "fastmma_modality_embedding"


@dataclass
class PatchSite:
    """One patched norm: `parent.<attr>` was `original` and is now `module`."""

    layer_index: int
    target: str
    parent: nn.Module
    attr: str
    original: nn.Module
    module: MMARMSNorm


@dataclass
class PatchState:
    """What fastmma keeps on a patched model (as the plain attribute `model._fastmma`)."""

    config: MMAConfig
    family: DecoderFamily
    sites: list[PatchSite]
    routing: RoutingContext
    requires_grad_before: dict[str, bool]
    table_dependencies: list[torch.Tensor]
    last_site_layer: int
    method: str = "mma"
    attn_implementation_before: str | None = None      # set back by unpatch when patch changed it


def modality_embedding(model: nn.Module) -> nn.Embedding:
    """The learnable modality embedding [num_modalities, D] of a patched model."""
    return getattr(model, MODALITY_EMBEDDING_NAME)


def is_patched(model: nn.Module) -> bool:
    return getattr(model, "_fastmma", None) is not None


def patch(model: nn.Module, config: MMAConfig | None = None) -> nn.Module:
    """Add MMA adapters, a modality embedding and routers to `model`; freeze the base. Returns `model`."""
    if is_patched(model):
        raise RuntimeError("this model is already patched by fastmma; call fastmma.unpatch(model) first "
                           "(or fastmma.load_adapters to load new adapter weights into it)")
    other_method = handler_for_config(config)
    if other_method is not None:
        return other_method.patch(model, config)
    config = config or MMAConfig()
    if not isinstance(config, MMAConfig):
        raise TypeError(f"fastmma.patch takes an MMAConfig (or another registered method's config); "
                        f"got {type(config).__name__}")
    family = family_for(model)
    hidden_size = model.config.hidden_size
    config.check_hidden_size(hidden_size)
    reference_param = family.decoder(model).embed_tokens.weight
    device = reference_param.device
    attn_before = apply_attn_implementation(model, config.attn_implementation)

    requires_grad_before = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)

    layers = family.layers(model)
    routing = RoutingContext(num_sites=len(layers) * len(config.targets), num_modalities=config.num_modalities)
    sites = []
    for layer_index, layer in enumerate(layers):
        for target in config.targets:
            attr = family.norm_attrs[target]
            original = getattr(layer, attr)
            adapter = MMAAdapter(hidden_size, config).to(device=device, dtype=torch.float32)
            module = MMARMSNorm(original, adapter, routing, site_index=len(sites)).train(model.training)
            setattr(layer, attr, module)
            sites.append(PatchSite(layer_index, target, layer, attr, original, module))
        if (config.recompute_swiglu or config.recompute_mlp) and family.mlp_attr:
            use_recomputing_swiglu(getattr(layer, family.mlp_attr), recompute_projections=config.recompute_mlp)
        if config.fused_rotary and hasattr(layer, "self_attn"):
            use_fused_rotary(layer.self_attn)
        if config.recompute_attention:
            use_layer_recompute(layer, family.mlp_attr, stash_mlp=not config.recompute_mlp)
        if config.recompute_norm:
            for target, attr in family.norm_attrs.items():
                if target not in config.targets:
                    use_lean_norm(getattr(layer, attr))
    final_norm = getattr(family.decoder(model), "norm", None)
    if config.recompute_norm and final_norm is not None:
        use_lean_norm(final_norm)
    if config.cache_autocast_weights:
        for layer in layers:
            for module in layer.modules():
                if isinstance(module, nn.Linear) and not module.weight.requires_grad:
                    use_autocast_weight_cache(module)

    modality_embedding = nn.Embedding(config.num_modalities, hidden_size).to(device=device, dtype=torch.float32)
    model.add_module(MODALITY_EMBEDDING_NAME, modality_embedding)
    state = PatchState(config, family, sites, routing, requires_grad_before,
                       table_dependencies=list(model.parameters()), last_site_layer=len(layers) - 1,
                       attn_implementation_before=attn_before)
    object.__setattr__(model, "_fastmma", state)
    model.__class__ = patched_class_for(type(model))
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Remove every fastmma module and restore the original ones and their requires_grad flags."""
    other_method = handler_for_model(model)
    if other_method is not None:
        return other_method.unpatch(model)
    state = require_patched(model, "unpatch")
    _restore_base(model, state)
    for name, p in model.named_parameters():
        p.requires_grad_(state.requires_grad_before.get(name, p.requires_grad))
    return model


def _restore_base(model: nn.Module, state: PatchState) -> None:
    for site in state.sites:
        setattr(site.parent, site.attr, site.original)
    if state.family.mlp_attr:
        for layer in state.family.layers(model):
            restore_mlp(getattr(layer, state.family.mlp_attr))
    restore_norms(model)
    restore_layer_recompute(model)
    restore_fused_rotary(model)
    restore_autocast_weights(model)
    if state.attn_implementation_before is not None:
        set_attn_implementation(model, state.attn_implementation_before)
    delattr(model, MODALITY_EMBEDDING_NAME)
    model.__class__ = original_class(type(model))
    object.__delattr__(model, "_fastmma")


MERGED_MODALITY_ATTR = "_fastmma_merged_modality"


def require_patched(model: nn.Module, action: str) -> PatchState:
    if not is_patched(model):
        merged = getattr(model, MERGED_MODALITY_ATTR, None)
        if merged is not None:
            raise RuntimeError(f"fastmma.{action}: this model was merged for modality {merged} (fastmma.merge): its "
                               f"adapters are folded into the base weights, so it has none left to save, merge or "
                               f"unpatch; use the patched model from before merging (save_adapters before merge)")
        raise RuntimeError(f"fastmma.{action} needs a model patched by fastmma.patch; this one is not patched")
    return model._fastmma


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable fastmma parameters of a patched model, by their names in `model`."""
    other_method = handler_for_model(model)
    if other_method is not None and other_method.parameters is not None:
        return other_method.parameters(model)
    require_patched(model, "adapter_parameters")
    return {name: p for name, p in model.named_parameters()
            if ".adapter." in name or name.startswith(MODALITY_EMBEDDING_NAME + ".")}
