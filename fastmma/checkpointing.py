"""Per-layer activation checkpointing on Hugging Face models, across transformers 5.x names."""
from __future__ import annotations

from torch import nn


def enable_checkpointing(model: nn.Module, offload: bool = False) -> None:
    """Recompute each decoder layer in backward (non-reentrant); `offload` keeps the checkpointed
    layer inputs in CPU memory (CUDA), where this transformers version supports it."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, offload=offload)
    elif offload:
        raise NotImplementedError("this transformers version cannot offload checkpointed activations; "
                                  "upgrade transformers or set offload=False")
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def disable_checkpointing(model: nn.Module) -> None:
    if not any(getattr(module, "gradient_checkpointing", False) for module in model.modules()):
        return
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()
