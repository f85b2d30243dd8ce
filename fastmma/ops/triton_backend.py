"""The "triton" backend of the fused norm + adapter ops: autograd Functions over fastmma.kernels.

Registered only when triton is installed; the kernels are imported on first use. The
backend runs CUDA tensors, and CPU tensors when TRITON_INTERPRET=1 (Triton's interpreter).

Both routing forms share one autograd Function. Its up-projections come as a stack of
tables [T, D, r/G] (and biases [T, D]), already multiplied by `scale`:
- per sample:  table b = scale * sum_e router_weights[b, e] U_e   (built here with torch, so
  autograd carries the table gradients P_b on: dU_e = scale * sum_b w_be P_b and
  d router_weights[b, e] = scale * (<P_b, U_e> + <dc_eff_b, c_e>));
- per token:   table e = scale * U_e, and each row picks its expert's table.
`rms_norm_adapter_linear` (per sample) has its own Function: the adapted activation goes straight
into cuBLAS's GEMM and is not kept, and its backward feeds dy = dOut W to the same kernels.
"""
from __future__ import annotations

import importlib.util
import os

import torch

from . import backend
from .norm_adapter import OP_PER_SAMPLE, OP_PER_TOKEN, routed_up_projection
from .norm_adapter_linear import OP_LINEAR

_ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _kernels():
    from .. import kernels
    return kernels


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    """Triton is installed and has somewhere to run: a CUDA GPU, or its CPU interpreter."""
    return importlib.util.find_spec("triton") is not None and (torch.cuda.is_available() or _interpreting())


class _NormAdapterFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, norm_weight, down_weight, down_bias, up_tables, bias_tables, h_mask, eps, layout):
        # x [M, D]; up_tables [T, D, r/G], bias_tables [T, D] fp32; h_mask [M, r] or None; all contiguous
        y, rstd, h_pre = _kernels().launch_norm_adapter_forward(x, norm_weight, eps, down_weight, down_bias,
                                                                up_tables, bias_tables, h_mask, layout)
        ctx.save_for_backward(x, norm_weight, down_weight, down_bias, up_tables, h_mask, rstd, h_pre)
        ctx.layout = layout
        return y                                                                        # [M, D]

    @staticmethod
    def backward(ctx, grad_y):
        return _norm_adapter_grads(ctx, grad_y.contiguous(), ctx.needs_input_grad[:6]) + (None, None, None)


class _NormAdapterLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, norm_weight, down_weight, down_bias, up_tables, bias_tables, h_mask, proj_weight, proj_bias,
                eps, layout):
        out, rstd, h_pre = _kernels().launch_adapter_linear(x, norm_weight, eps, down_weight, down_bias, up_tables,
                                                            bias_tables, h_mask, layout, proj_weight, proj_bias)
        ctx.save_for_backward(x, norm_weight, down_weight, down_bias, up_tables, h_mask, rstd, h_pre, bias_tables,
                              proj_weight)
        ctx.layout = layout
        ctx.eps = eps
        return out                                                                      # [M, N]

    @staticmethod
    def backward(ctx, grad_out):
        x, norm_weight, down_weight, down_bias, up_tables, h_mask, rstd, h_pre, bias_tables, proj_weight = \
            ctx.saved_tensors
        grad_out = grad_out.contiguous()                                                # [M, N]
        grad_proj_weight = grad_proj_bias = None
        if ctx.needs_input_grad[7]:
            adapted, _, _ = _kernels().launch_norm_adapter_forward(x, norm_weight, ctx.eps, down_weight, down_bias,
                                                                   up_tables, bias_tables, h_mask, ctx.layout)
            grad_proj_weight = grad_out.t() @ adapted                                   # [N, D]
        if ctx.needs_input_grad[8]:
            grad_proj_bias = grad_out.sum(0, dtype=torch.float32).to(grad_out.dtype)    # [N]
        grads = (None,) * 6
        if any(ctx.needs_input_grad[:6]):
            grads = _norm_adapter_grads(ctx, grad_out @ proj_weight, ctx.needs_input_grad[:6])   # dy [M, D]
        return grads + (None, grad_proj_weight, grad_proj_bias, None, None)


def _norm_adapter_grads(ctx, grad_y, needs):
    """Gradients for (x, norm_weight, down_weight, down_bias, up_tables, bias_tables) given grad_y [M, D]."""
    x, norm_weight, down_weight, down_bias, up_tables, h_mask, rstd, h_pre = ctx.saved_tensors[:8]
    grads = _kernels().launch_norm_adapter_backward(
        grad_y, x, norm_weight, down_weight, down_bias, up_tables, h_mask, rstd, h_pre, ctx.layout,
        need_grad_x=needs[0], need_grad_norm_weight=needs[1], need_adapter_grads=any(needs[2:6]))
    wanted = (grads.x, grads.norm_weight, grads.down_weight, grads.down_bias, grads.up_tables, grads.bias_tables)
    like = (x, norm_weight, down_weight, down_bias, up_tables, up_tables)
    return tuple(grad.to(ref.dtype) if need else None for grad, ref, need in zip(wanted, like, needs))


def triton_rms_norm_adapter(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias, router_weights, scale,
                            h_mask=None):
    _check_inputs(x, norm_weight, down_weight, down_bias, up_weight, up_bias, h_mask)
    _check_router_weights(router_weights, x, up_weight)
    batch, length, hidden = x.shape
    up_tables, bias_tables = _per_sample_tables(up_weight, up_bias, router_weights, scale)
    layout = _kernels().per_sample_layout(batch, length, x.device)
    y = _NormAdapterFunction.apply(_rows(x), norm_weight.contiguous(), down_weight.contiguous(), down_bias.contiguous(),
                                   up_tables, bias_tables, _mask_rows(h_mask), float(eps), layout)
    return y.view(batch, length, hidden)


def triton_rms_norm_adapter_by_expert(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias, expert_ids,
                                      scale, h_mask=None):
    _check_inputs(x, norm_weight, down_weight, down_bias, up_weight, up_bias, h_mask)
    _check_expert_ids(expert_ids, x, up_weight.shape[0])
    batch, length, hidden = x.shape
    up_tables = (scale * up_weight.to(torch.float32)).contiguous()                 # [E, D, r/G]
    bias_tables = (scale * up_bias.to(torch.float32)).contiguous()                 # [E, D]
    layout = _kernels().per_token_layout(expert_ids, up_weight.shape[0])
    y = _NormAdapterFunction.apply(_rows(x), norm_weight.contiguous(), down_weight.contiguous(), down_bias.contiguous(),
                                   up_tables, bias_tables, _mask_rows(h_mask), float(eps), layout)
    return y.view(batch, length, hidden)


def triton_rms_norm_adapter_linear(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias, router_weights,
                                   scale, h_mask, proj_weight, proj_bias=None):
    _check_inputs(x, norm_weight, down_weight, down_bias, up_weight, up_bias, h_mask)
    _check_router_weights(router_weights, x, up_weight)
    _check_projection(proj_weight, proj_bias, x)
    batch, length, _ = x.shape
    up_tables, bias_tables = _per_sample_tables(up_weight, up_bias, router_weights, scale)
    layout = _kernels().per_sample_layout(batch, length, x.device)
    out = _NormAdapterLinearFunction.apply(
        _rows(x), norm_weight.contiguous(), down_weight.contiguous(), down_bias.contiguous(), up_tables, bias_tables,
        _mask_rows(h_mask), proj_weight.contiguous(), None if proj_bias is None else proj_bias.contiguous(),
        float(eps), layout)
    return out.view(batch, length, proj_weight.shape[0])


def _per_sample_tables(up_weight, up_bias, router_weights, scale):
    """U_eff [B, D, r/G] and c_eff [B, D] in fp32, scale included; differentiable."""
    up_tables, bias_tables = routed_up_projection(router_weights, up_weight, up_bias, scale, torch.float32)
    return up_tables.contiguous(), bias_tables.contiguous()                          # [B, D, r/G], [B, D]


def _rows(x):
    return x.reshape(-1, x.shape[-1]).contiguous()                                   # [M, D]


def _mask_rows(h_mask):
    return None if h_mask is None else h_mask.reshape(-1, h_mask.shape[-1]).contiguous()   # [M, r]


def _check_inputs(x, norm_weight, down_weight, down_bias, up_weight, up_bias, h_mask):
    if x.device.type != "cuda" and not (x.device.type == "cpu" and _interpreting()):
        raise RuntimeError(f"the triton backend runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1); x is on "
                           f"{x.device}: move it to a GPU or set FASTMMA_BACKEND=torch")
    if x.dim() != 3 or x.dtype not in _ACTIVATION_DTYPES or x.numel() == 0:
        raise ValueError(f"x must be a non-empty [B, L, D] tensor of float32, float16 or bfloat16; got shape "
                         f"{tuple(x.shape)} and dtype {x.dtype}")
    batch, length, hidden = x.shape
    if up_weight.dim() != 3:
        raise ValueError(f"up_weight must be [E, D, r/G]; got shape {tuple(up_weight.shape)}")
    experts, _, rank_per_group = up_weight.shape
    rank = down_weight.shape[0]
    expected = {"norm_weight": (hidden,), "down_weight": (rank, hidden), "down_bias": (rank,),
                "up_weight": (experts, hidden, rank_per_group), "up_bias": (experts, hidden)}
    given = {"norm_weight": norm_weight, "down_weight": down_weight, "down_bias": down_bias, "up_weight": up_weight,
             "up_bias": up_bias}
    if h_mask is not None:
        expected["h_mask"] = (batch, length, rank)
        given["h_mask"] = h_mask
    for name, tensor in given.items():
        if tuple(tensor.shape) != expected[name] or tensor.device != x.device:
            raise ValueError(f"{name} must have shape {expected[name]} on {x.device} for x of shape {tuple(x.shape)}; "
                             f"got {tuple(tensor.shape)} on {tensor.device}")
    if rank_per_group == 0 or rank % rank_per_group or hidden % (rank // rank_per_group):
        raise ValueError(f"rank {rank} must be a multiple of up_weight's r/G = {rank_per_group}, and D = {hidden} a "
                         f"multiple of the group count")


def _check_router_weights(router_weights, x, up_weight):
    expected = (x.shape[0], up_weight.shape[0])
    if tuple(router_weights.shape) != expected or router_weights.device != x.device:
        raise ValueError(f"router_weights must have shape {expected} (per sample) on {x.device}; got "
                         f"{tuple(router_weights.shape)} on {router_weights.device}")


def _check_expert_ids(expert_ids, x, experts):
    if tuple(expert_ids.shape) != tuple(x.shape[:2]) or expert_ids.dtype.is_floating_point \
            or expert_ids.device != x.device:
        raise ValueError(f"expert_ids must be an integer tensor of shape {tuple(x.shape[:2])} on {x.device}; got "
                         f"{expert_ids.dtype} {tuple(expert_ids.shape)} on {expert_ids.device}")
    if bool(((expert_ids < 0) | (expert_ids >= experts)).any()):
        raise ValueError(f"expert_ids must lie in [0, {experts - 1}]")


def _check_projection(proj_weight, proj_bias, x):
    hidden = x.shape[-1]
    if proj_weight.dim() != 2 or proj_weight.shape[1] != hidden or proj_weight.dtype != x.dtype \
            or proj_weight.device != x.device:
        raise ValueError(f"proj_weight must be [N, {hidden}] in {x.dtype} on {x.device}; got "
                         f"{tuple(proj_weight.shape)} {proj_weight.dtype} on {proj_weight.device}")
    if proj_bias is not None and (tuple(proj_bias.shape) != (proj_weight.shape[0],) or proj_bias.dtype != x.dtype
                                  or proj_bias.device != x.device):
        raise ValueError(f"proj_bias must be [{proj_weight.shape[0]}] in {x.dtype} on {x.device}; got "
                         f"{tuple(proj_bias.shape)} {proj_bias.dtype} on {proj_bias.device}")


if importlib.util.find_spec("triton") is not None:
    backend.register_availability("triton", triton_available)
    backend.register(OP_PER_SAMPLE, "triton", triton_rms_norm_adapter)
    backend.register(OP_PER_TOKEN, "triton", triton_rms_norm_adapter_by_expert)
    backend.register(OP_LINEAR, "triton", triton_rms_norm_adapter_linear)
