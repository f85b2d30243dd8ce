"""Which attention kernel a patched model runs: fastmma's on CPU, flash-attn 2 on CUDA when it is installed,
else PyTorch SDPA.

`MMAConfig.attn_implementation`:
- "auto" (default): "flash_attention_2" when the model is on CUDA in fp16/bf16 and the `flash_attn`
  package is importable (if transformers then refuses it, a warning and SDPA); "fastmma"
  (cpu_attention.py: a backward that keeps no attention output) on CPU when the C++ kernels are
  built; otherwise "sdpa";
- "keep": leave the model's own setting;
- "fastmma", "sdpa", "eager", "flash_attention_2": that one (an error if transformers cannot use it here).
`fastmma.unpatch` puts the model's previous setting back.
"""
from __future__ import annotations

import importlib.util
import warnings

import torch
from torch import nn

from ..config import ATTN_IMPLEMENTATIONS
from . import cpu_attention
_FLASH_DTYPES = (torch.float16, torch.bfloat16)


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def choose_attn_implementation(requested: str, device_type: str, dtype: torch.dtype, current: str | None) -> str | None:
    """The implementation `requested` resolves to for a model on `device_type` with weights in `dtype`."""
    if requested not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation={requested!r}; choose one of {ATTN_IMPLEMENTATIONS}")
    if requested == "keep":
        return current
    if requested != "auto":
        return requested
    if device_type == "cuda" and dtype in _FLASH_DTYPES and flash_attn_installed():
        return "flash_attention_2"
    if device_type == "cpu" and cpu_attention.available():
        return cpu_attention.NAME
    return "sdpa"


def current_attn_implementation(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def apply_attn_implementation(model: nn.Module, requested: str) -> str | None:
    """Set `model`'s attention implementation as `requested` says; return the previous one if it changed."""
    current = current_attn_implementation(model)
    device_type, dtype = placement(model)
    chosen = choose_attn_implementation(requested, device_type, dtype, current)
    if chosen == current or chosen is None:
        return None
    try:
        set_attn_implementation(model, chosen)
    except (ValueError, ImportError, RuntimeError) as err:
        if requested != "auto":
            raise ValueError(f"MMAConfig.attn_implementation={requested!r} cannot be used here: {err}") from err
        warnings.warn(f"fastmma: flash-attn is installed but transformers refused it ({err}); using SDPA",
                      RuntimeWarning, stacklevel=3)
        if current == "sdpa":
            return None
        set_attn_implementation(model, "sdpa")
    return current


def placement(model: nn.Module) -> tuple[str, torch.dtype]:
    """(device type, dtype) of the model's weights, read from its input embeddings."""
    weight = model.get_input_embeddings().weight
    return weight.device.type, weight.dtype


def set_attn_implementation(model: nn.Module, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:                                                   # older transformers
        model.config._attn_implementation = name
