"""RMSNorm + MMA adapter + a linear projection, as one op.

    out = F.linear(rms_norm_adapter(x, ...), proj_weight, proj_bias)     # proj_weight [N, D], e.g. q/k/v concatenated

Fused, the adapted activation y is never written: the Triton backend builds it tile by
tile inside the projection's GEMM. The arguments before `proj_weight` are those of
`rms_norm_adapter` (per-sample router weights [B, E]); proj_weight and proj_bias [N]
(or None) are in x's dtype. Returns [B, L, N] in x's dtype.
"""
from __future__ import annotations

import torch.nn.functional as F

from .. import reference
from . import backend
from .norm_adapter import torch_rms_norm_adapter

OP_LINEAR = "rms_norm_adapter_linear"


def rms_norm_adapter_linear(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias, router_weights, scale,
                            h_mask, proj_weight, proj_bias=None):
    """x [B, L, D], router_weights [B, E], proj_weight [N, D] -> [B, L, N]. See the module docstring."""
    _, impl = backend.resolve(OP_LINEAR, x.device.type)
    return impl(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias, router_weights, scale, h_mask,
                proj_weight, proj_bias)


def torch_rms_norm_adapter_linear(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias, router_weights,
                                  scale, h_mask, proj_weight, proj_bias=None):
    adapted = torch_rms_norm_adapter(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias, router_weights,
                                     scale, h_mask)                                      # [B, L, D]
    return F.linear(adapted, proj_weight, proj_bias)


def reference_rms_norm_adapter_linear(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias,
                                      router_weights, scale, h_mask, proj_weight, proj_bias=None):
    adapted = reference.norm_adapter_reference(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias,
                                               router_weights, scale, h_mask)            # [B, L, D]
    return F.linear(adapted, proj_weight, proj_bias)


backend.register(OP_LINEAR, "torch", torch_rms_norm_adapter_linear)
backend.register(OP_LINEAR, "reference", reference_rms_norm_adapter_linear)
