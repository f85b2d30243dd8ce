"""The frozen RMSNorm (Hugging Face LLaMA semantics) keeping only its input and rstd for backward.

Autograd's plain version, for a bf16/fp16 input, keeps the fp32 upcast of the input (twice the
input's bytes) and rstd; this one keeps the input in its own dtype and rstd [..., 1] (fp32) and
recomputes the normalized rows in backward. For fp32 inputs both keep the same bytes. On CPU the input
gradient of a frozen norm is one C++ pass per row (fastmma/ops/cpp_rms_norm.py).

    y = weight * (x32 * rstd).to(x.dtype),   rstd = 1 / sqrt(mean(x32^2) + eps),   x32 = x in fp32

The forward runs exactly Hugging Face's ops (in fp32 whatever the input dtype, as LlamaRMSNorm does),
so a patched model's outputs equal the base model's bit for bit.
"""
from __future__ import annotations

import torch

from ..ops import cpp_rms_norm


def _rms_norm_forward(x, weight, eps) -> tuple[torch.Tensor, torch.Tensor]:
    x_c = x.to(torch.float32)
    rstd = torch.rsqrt(x_c.pow(2).mean(-1, keepdim=True) + eps)                     # [..., 1]
    return weight * (x_c * rstd).to(x.dtype), rstd


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        y, rstd = _rms_norm_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, rstd = ctx.saved_tensors
        if not ctx.needs_input_grad[1] and cpp_rms_norm.applies(grad_y, x, weight):
            return cpp_rms_norm.input_grad(grad_y, x, weight, rstd), None, None
        compute = rstd.dtype
        normed = x.to(compute) * rstd                                                 # [..., D]
        grad_normed = (grad_y * weight).to(x.dtype).to(compute)                      # as autograd's cast chain
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = rstd * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))
            grad_x = grad_x.to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (grad_y * normed.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        return grad_x, grad_w, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return _rms_norm_forward(x, weight, eps)[0]    # nothing to save: skip the autograd.Function's overhead
    return _RMSNorm.apply(x, weight, eps)
