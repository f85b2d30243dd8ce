"""Per-layer activation checkpointing on Hugging Face models, across transformers 5.x names."""
from __future__ import annotations

import inspect

from torch import nn

from .checks import require_positive_int


def enable_checkpointing(model: nn.Module, offload: bool = False, every_n_layers: int = 1) -> None:
    """Recompute decoder layers in backward (non-reentrant): every layer, or every n-th.

    every_n_layers: checkpoint layers 0, n, 2n, ... (ceil(layers / n) of them) and let the others keep
    their activations: memory between no checkpointing and full checkpointing, at a step time between
    them too (`fastmma.estimate_memory(..., checkpointing=True, every_n_layers=n)` predicts the memory).
    offload: keep the checkpointed layer inputs (the only activations a checkpointed layer keeps) in pinned
    CPU memory instead of GPU memory, at the cost of a device-to-host copy per layer in the forward and
    back in the backward. On a model whose parameters are on the CPU it is a no-op: the inputs are in CPU
    memory already, and copying them there again would only double them.
    """
    require_positive_int("every_n_layers", every_n_layers, " (1 = every layer)")
    kwargs = {"use_reentrant": False}
    offload = offload and on_accelerator(model)
    if hasattr(model, "activation_checkpointing_enable"):
        enable = model.activation_checkpointing_enable
        if "every_n_layers" in inspect.signature(enable).parameters:
            enable(activation_checkpointing_kwargs=kwargs, offload=offload, every_n_layers=every_n_layers)
            return
        enable(activation_checkpointing_kwargs=kwargs, offload=offload)
    elif offload:
        raise NotImplementedError("this transformers version cannot offload checkpointed activations; "
                                  "upgrade transformers or set offload=False")
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    _keep_every_nth(model, every_n_layers)


def _keep_every_nth(model: nn.Module, every_n_layers: int) -> None:
    """Leave checkpointing on only for decoder layers 0, n, 2n, ... (for transformers without `every_n_layers`)."""
    if every_n_layers == 1:
        return
    for index, layer in enumerate(_checkpointable_layers(model)):
        layer.gradient_checkpointing = index % every_n_layers == 0


def checkpointed_layers(model: nn.Module) -> list[int]:
    """Indices (in module order) of the decoder layers that are recomputed in backward."""
    return [index for index, layer in enumerate(_checkpointable_layers(model))
            if getattr(layer, "gradient_checkpointing", False)]


def _checkpointable_layers(model: nn.Module) -> list[nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


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
