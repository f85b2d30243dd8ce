"""fastmma.merge: fold each modality-resolved adapter into the frozen projections it feeds.

With the router weights fixed by the modality, an adapter is the affine map
    y = (I + U_eff A) n + (U_eff a + c_eff),
so a projection W (+ b) that reads y becomes W' = W + (W U_eff) A and b' = b + W (U_eff a + c_eff).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..adapters.mma import dense_block_diagonal
from .core import MERGED_MODALITY_ATTR, PatchSite, _restore_base, is_patched, require_patched
from .methods import handler_for_model


@torch.no_grad()
def merge(model: nn.Module, modality: int = 0) -> nn.Module:
    """Fold every adapter, routed for `modality`, into the following Linear layers and return the plain model."""
    other_method = handler_for_model(model)
    if other_method is not None:
        return other_method.merge(model, modality=modality)
    state = require_patched(model, "merge")
    if isinstance(modality, bool) or not isinstance(modality, int) or not 0 <= modality < state.config.num_modalities:
        raise ValueError(f"fastmma.merge(modality=...) takes one int in [0, {state.config.num_modalities - 1}]; "
                         f"got {modality!r} (a merged model serves a single modality)")
    was_training = model.training
    model.eval()
    state.routing.refresh_tables(model, state.table_dependencies)
    targets_gaining_biases = _targets_without_biases(state)
    for site in state.sites:
        router_weights = state.routing.tables[site.module.site_index][modality][None]   # [1, E]
        _fold_site(state.family, site, router_weights)
    _enable_bias_flags(model, state, targets_gaining_biases)
    _restore_base(model, state)
    for name, p in model.named_parameters():
        p.requires_grad_(state.requires_grad_before.get(name, p.requires_grad))
    _mark_merged(model, modality)
    return model.train(was_training)


def _mark_merged(model: nn.Module, modality: int) -> None:
    """Record the merged modality (for the errors of a later save, merge or forward with another modality).

    The check of `modality=` is a forward pre-hook, so forward keeps the base class's own signature.
    """
    if not hasattr(model, MERGED_MODALITY_ATTR):
        model.register_forward_pre_hook(_check_merged_modality, with_kwargs=True)
    object.__setattr__(model, MERGED_MODALITY_ATTR, modality)


def _check_merged_modality(model: nn.Module, args: tuple, kwargs: dict):
    """Drop a `modality=` naming the merged modality (code written for the patched model keeps working);
    refuse any other, which the merged weights cannot serve."""
    if is_patched(model) or "modality" not in kwargs:
        return None
    kwargs = dict(kwargs)
    modality = kwargs.pop("modality")
    merged = getattr(model, MERGED_MODALITY_ATTR)
    if modality is not None and not _all_equal(modality, merged):
        raise ValueError(f"this model was merged for modality {merged} (fastmma.merge), so it serves only that "
                         f"modality; got modality={modality!r}. Merge a copy of the patched model for each modality")
    return args, kwargs


def _all_equal(modality, merged: int) -> bool:
    if isinstance(modality, bool) or not isinstance(modality, (int, torch.Tensor)):
        return False
    modality = torch.as_tensor(modality)
    return not modality.is_floating_point() and bool((modality == merged).all())


def _fold_site(family, site: PatchSite, router_weights: torch.Tensor) -> None:
    adapter = site.module.adapter
    up_eff, bias_eff = adapter.effective_up(router_weights.float())          # [1, D, r/G], [1, D]
    up_dense = dense_block_diagonal(up_eff[0].double(), adapter.groups)      # [D, r]
    down = adapter.down.weight.double()                                      # [r, D]
    shift = up_dense @ adapter.down.bias.double() + bias_eff[0].double()     # [D]
    sub_name, linear_names = family.projections[site.target]
    owner = getattr(site.parent, sub_name)
    for name in linear_names:
        setattr(owner, name, _folded_linear(getattr(owner, name), up_dense, down, shift))


def _folded_linear(linear: nn.Linear, up_dense, down, shift) -> nn.Linear:
    weight = linear.weight.double()                                          # [out, D]
    new_weight = weight + (weight @ up_dense) @ down
    new_bias = weight @ shift
    if linear.bias is not None:
        new_bias = new_bias + linear.bias.double()
    folded = nn.Linear(linear.in_features, linear.out_features, bias=True,
                       device=linear.weight.device, dtype=linear.weight.dtype)
    folded.weight.copy_(new_weight)
    folded.bias.copy_(new_bias)
    folded.weight.requires_grad_(linear.weight.requires_grad)
    folded.bias.requires_grad_(False)
    return folded


def _targets_without_biases(state) -> list[str]:
    """Targets whose projections do not all have biases yet (the fold will add them)."""
    targets = []
    for target in state.config.targets:
        sub_name, linear_names = state.family.projections[target]
        owners = [getattr(site.parent, sub_name) for site in state.sites if site.target == target]
        if any(getattr(owner, name).bias is None for owner in owners for name in linear_names):
            targets.append(target)
    return targets


def _enable_bias_flags(model: nn.Module, state, targets: list[str]) -> None:
    """Set the config flag that gives the folded projections biases, so the model saves and reloads as it is.

    The flag also gives biases to sibling layers (e.g. o_proj); those get zero biases.
    """
    for target in targets:
        flag, linear_names = state.family.bias_flags.get(target, (None, ()))
        sub_name, _ = state.family.projections[target]
        if flag is None or not hasattr(model.config, flag):
            warnings.warn(f"{model.config.model_type}'s config has no flag for biases on its {sub_name} "
                          f"projections: the merged model is exact in memory, but save_pretrained/from_pretrained "
                          f"would drop the folded biases", UserWarning, stacklevel=3)
            continue
        setattr(model.config, flag, True)
        for layer in state.family.layers(model):
            owner = getattr(layer, sub_name)
            for name in linear_names:
                linear = getattr(owner, name)
                if linear.bias is None:
                    linear.bias = nn.Parameter(torch.zeros(linear.out_features, device=linear.weight.device,
                                                           dtype=linear.weight.dtype), requires_grad=False)
