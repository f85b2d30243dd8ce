"""out = Linear(RMSNorm + MMA adapter (x)): the norm + adapter kernel, then the projection by cuBLAS.

    out[m, :] = y[m, :] @ W^T + bias,   y = n + U_t (h_pre * h_mask) + c_t   (W: [N, D], e.g. q/k/v concatenated)

y [M, D] is written by the norm + adapter forward kernel, multiplied by torch.nn.functional.linear and
dropped: autograd keeps x, rstd and h_pre, never y (the backward rebuilds y only when W trains).

An earlier version built y tile by tile in the prologue of a Triton GEMM and never wrote it. On an
H100 (bf16, M = 2048, D = 4096, N = 12288) that GEMM took 5.87 ms against 0.12 ms for the norm +
adapter kernel plus 0.27 ms for cuBLAS's GEMM (profiler kernel times); its prologue rebuilt each y
tile once per 128-wide block of N, 96 times at N = 12288. Writing y once costs 16.8 MB of traffic there.
"""
from __future__ import annotations

import torch.nn.functional as F

from .layout import RowLayout
from .norm_adapter_forward import launch_norm_adapter_forward


def launch_adapter_linear(x, norm_weight, eps, down_weight, down_bias, up_tables, bias_tables, h_mask,
                          layout: RowLayout, proj_weight, proj_bias):
    """x [M, D]; proj_weight [N, D], proj_bias [N] or None, in x's dtype; the rest as for the norm + adapter.

    Returns (out [M, N] in x's dtype, rstd [M] fp32, h_pre [M, r] fp32).
    """
    adapted, rstd, h_pre = launch_norm_adapter_forward(x, norm_weight, eps, down_weight, down_bias, up_tables,
                                                       bias_tables, h_mask, layout)                # [M, D]
    return F.linear(adapted, proj_weight, proj_bias), rstd, h_pre                                 # [M, N]
