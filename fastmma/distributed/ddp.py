"""DistributedDataParallel for fastmma-patched models: only the adapters' gradients are all-reduced."""
from __future__ import annotations

import inspect
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def wrap_ddp(model: nn.Module, **ddp_kwargs) -> DistributedDataParallel:
    """`model` in DDP with find_unused_parameters=False.

    DDP reduces only parameters with requires_grad, so a patched model all-reduces its adapters
    and nothing else; the frozen weights are broadcast from rank 0 once, when DDP is built, which
    also makes every rank start from rank 0's adapter initialisation. Buffers (rotary tables)
    are constant and are not re-broadcast on every forward.
    find_unused_parameters=False needs every trainable parameter to get a gradient on every rank
    at every step: fastmma's models guarantee it (see LaVIN.forward for the one case that needs help).
    ddp_kwargs override any of these settings.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("wrap_ddp needs a process group; call fastmma.distributed.init_distributed() first "
                           "(under torchrun) or torch.distributed.init_process_group")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters; patch it with fastmma.patch before wrapping it")
    device = next(p for p in model.parameters() if p.requires_grad).device
    options = {"find_unused_parameters": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        options["forward_sync_buffers"] = False            # torch >= 2.13 (broadcast_buffers is deprecated)
    else:
        options["broadcast_buffers"] = False
    if device.type == "cuda":
        options["device_ids"] = [device.index if device.index is not None else torch.cuda.current_device()]
    options.update(ddp_kwargs)
    return DistributedDataParallel(model, **options)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or `model` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def gradient_sync(model: nn.Module, enabled: bool):
    """A context for one forward + backward: DDP all-reduces the gradients only when `enabled` (the last
    micro-batch of an accumulated step); a plain module always gets a no-op context."""
    if enabled or not isinstance(model, DistributedDataParallel):
        return nullcontext()
    return model.no_sync()
