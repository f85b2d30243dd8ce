"""Per-layer activation checkpointing on Hugging Face models, across transformers 5.x names."""
from __future__ import annotations

from torch import nn


def enable_checkpointing(model: nn.Module, offload: bool = False) -> None:
    """Recompute each decoder layer in backward (non-reentrant).

    offload: keep the checkpointed layer inputs (the only activations a checkpointed layer keeps) in pinned
    CPU memory instead of GPU memory, at the cost of a device-to-host copy per layer in the forward and
    back in the backward. On a model whose parameters are on the CPU it is a no-op: the inputs are in CPU
    memory already, and copying them there again would only double them.
    """
    kwargs = {"use_reentrant": False}
    offload = offload and on_accelerator(model)
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, offload=offload)
    elif offload:
        raise NotImplementedError("this transformers version cannot offload checkpointed activations; "
                                  "upgrade transformers or set offload=False")
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def on_accelerator(model: nn.Module) -> bool:
    """Whether the model's parameters live on a device other than the CPU (where offloading frees memory)."""
    parameter = next(model.parameters(), None)
    return parameter is not None and parameter.device.type not in ("cpu", "meta")


def disable_checkpointing(model: nn.Module) -> None:
    if not any(getattr(module, "gradient_checkpointing", False) for module in model.modules()):
        return
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()
