"""A stand-in for the one timm function torchscale 0.3.0 needs, used only when timm cannot be imported.

torchscale imports exactly one name from timm: `timm.models.layers.drop_path` (in its
DropPath module). timm itself pulls in torchvision, which is often missing or broken
beside a CPU-only torch. While torchscale is being imported, `installed_if_timm_missing`
puts a minimal `timm.models.layers` module holding `drop_path` into `sys.modules`, and
removes it again afterwards, so nothing else ever sees a fake timm. torchscale keeps the
function it bound at import time. When timm imports cleanly, nothing is shimmed.
"""
from __future__ import annotations

import sys
import types
from contextlib import contextmanager

import torch

_SHIM_MODULE_NAMES = ("timm", "timm.models", "timm.models.layers")


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False,
              scale_by_keep: bool = True) -> torch.Tensor:
    """Stochastic depth: zero whole samples of `x` with probability `drop_prob` during training."""
    if not drop_prob or not training:
        return x
    keep_prob = 1.0 - drop_prob
    sample_mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep_prob)   # [B, 1, ...]
    if scale_by_keep and keep_prob > 0.0:
        sample_mask.div_(keep_prob)
    return x * sample_mask


def timm_is_importable() -> bool:
    try:
        from timm.models.layers import drop_path as _  # noqa: F401
    except Exception:   # timm absent, or broken by its torchvision import
        return False
    return True


@contextmanager
def installed_if_timm_missing():
    """Within the block, `from timm.models.layers import drop_path` works even without timm."""
    if timm_is_importable():
        yield
        return
    stubs = {name: types.ModuleType(name) for name in _SHIM_MODULE_NAMES}
    stubs["timm"].models = stubs["timm.models"]
    stubs["timm.models"].layers = stubs["timm.models.layers"]
    stubs["timm.models.layers"].drop_path = drop_path
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for name in _SHIM_MODULE_NAMES:
            if sys.modules.get(name) is stubs[name]:
                del sys.modules[name]
