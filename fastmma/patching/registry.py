"""Model families fastmma can patch, keyed by `config.model_type`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class DecoderFamily:
    """Where a decoder-only family keeps the pieces MMA touches.

    norm_attrs: target -> name of the norm module on each decoder layer.
    projections: target -> (sub-module on the layer, names of the Linear layers fed by that norm).
    bias_flags: target -> config attribute that turns on biases for those Linear layers (if any),
        and the Linear layers that flag also gives biases to.
    """

    name: str
    model_types: tuple[str, ...]
    decoder: Callable[[nn.Module], nn.Module]
    norm_attrs: dict[str, str]
    projections: dict[str, tuple[str, tuple[str, ...]]]
    bias_flags: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    mlp_attr: str | None = None           # the SwiGLU MLP on each layer (gate_proj, up_proj, down_proj)

    def layers(self, model: nn.Module):
        return self.decoder(model).layers


_FAMILIES: dict[str, DecoderFamily] = {}


def register_family(family: DecoderFamily) -> DecoderFamily:
    for model_type in family.model_types:
        _FAMILIES[model_type] = family
    return family


def supported_model_types() -> list[str]:
    return sorted(_FAMILIES)


def family_for(model: nn.Module) -> DecoderFamily:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        raise TypeError(f"fastmma.patch expects a Hugging Face model with a `config.model_type`; "
                        f"got {type(model).__name__}")
    family = _FAMILIES.get(model_type)
    if family is None:
        raise NotImplementedError(f"fastmma.patch does not support model_type={model_type!r} "
                                  f"({type(model).__name__}); supported families: {', '.join(supported_model_types())}")
    if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        raise TypeError(f"fastmma.patch expects a causal LM with an LM head (e.g. LlamaForCausalLM); "
                        f"got {type(model).__name__}")
    return family
