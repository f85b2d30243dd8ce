"""Kernel time of the norm + adapter forward and backward kernels over block sizes (the source of the defaults).

    python3 benchmarks/gpu/sweep_blocks.py

LLaMA-7B shapes (M = 4 x 512 rows, D = 4096, r = 8, G = 2, 4 per-sample tables, bf16, dropout mask on).
Each configuration is timed with triton.testing.do_bench_cudagraph (kernel time, no host launch cost) and
its output compared with the first configuration's ("maxdiff": bf16 rounding differs with the block
width). Forward: BLOCK_M x BLOCK_D x warps. Backward: the rows kernel's blocks beside the columns
kernel's default, then the columns kernel's beside the rows kernel's default. Without a CUDA GPU it says
so and exits 0.
"""
from __future__ import annotations

import itertools

import torch


def sweep_forward(F, fwd, ref_y):
    print("forward BLOCK_M BLOCK_D warps us maxdiff", flush=True)
    from triton.testing import do_bench_cudagraph

    for bm, bd, warps in itertools.product((16, 32, 64), (64, 128, 256, 512), (4, 8)):
        F.BLOCK_M, F.BLOCK_D, F.NUM_WARPS = bm, bd, warps
        try:
            y = fwd()[0].float()
            print(f"fwd {bm:3d} {bd:4d} {warps} {do_bench_cudagraph(fwd) * 1e3:8.1f} "
                  f"{(y - ref_y).abs().max().item():.2e}", flush=True)
        except Exception as err:                      # e.g. OutOfResources: too much shared memory
            print(f"fwd {bm} {bd} {warps} failed {type(err).__name__}: {str(err)[:100]}", flush=True)


def sweep_backward(B, bwd, ref, rows_default, columns_default):
    from triton.testing import do_bench_cudagraph

    def maxdiff(grads):
        return max((grads.x.float() - ref.x.float()).abs().max().item(),
                   (grads.down_weight - ref.down_weight).abs().max().item(),
                   (grads.up_tables - ref.up_tables).abs().max().item())

    print("backward rows_bm rows_bd cols_bm cols_bd warps us maxdiff", flush=True)
    configs = [(bm, bd, *columns_default, w) for bm, bd, w in itertools.product((16, 32, 64), (64, 128, 256), (4, 8))]
    configs += [(*rows_default, cm, cd, w) for cm, cd, w in itertools.product((16, 32, 64, 128), (32, 64, 128), (4, 8))]
    for config in configs:
        B.ROWS_BLOCK_M, B.ROWS_BLOCK_D, B.COLUMNS_BLOCK_M, B.COLUMNS_BLOCK_D, B.NUM_WARPS = config
        try:
            grads = bwd()
            print("bwd", *config, f"{do_bench_cudagraph(bwd) * 1e3:8.1f} {maxdiff(grads):.2e}", flush=True)
        except Exception as err:
            print("bwd", *config, f"failed {type(err).__name__}: {str(err)[:100]}", flush=True)


def main() -> int:
    if not torch.cuda.is_available():
        print("sweep_blocks needs a CUDA GPU and none is available; nothing was timed.")
        return 0
    from fastmma.kernels import layout, norm_adapter_backward as B, norm_adapter_forward as F

    torch.manual_seed(0)
    rows, hidden, rank, groups, tables = 2048, 4096, 8, 2, 4
    x = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)                   # [M, D]
    norm_weight = (1 + 0.1 * torch.randn(hidden, device="cuda")).to(torch.bfloat16)     # [D]
    down_weight = torch.randn(rank, hidden, device="cuda") / 64                          # [r, D]
    down_bias = torch.randn(rank, device="cuda") * 0.1                                   # [r]
    up_tables = torch.randn(tables, hidden, rank // groups, device="cuda") * 0.3         # [T, D, r/G]
    bias_tables = torch.randn(tables, hidden, device="cuda") * 0.1                       # [T, D]
    h_mask = (torch.rand(rows, rank, device="cuda") > 0.1).float() / 0.9                  # [M, r]
    row_layout = layout.per_sample_layout(tables, rows // tables, x.device)
    grad_y = torch.randn_like(x)                                                         # [M, D]

    def fwd():
        return F.launch_norm_adapter_forward(x, norm_weight, 1e-5, down_weight, down_bias, up_tables, bias_tables,
                                             h_mask, row_layout)

    defaults = (F.BLOCK_M, F.BLOCK_D, F.NUM_WARPS)
    sweep_forward(F, fwd, fwd()[0].float())
    F.BLOCK_M, F.BLOCK_D, F.NUM_WARPS = defaults
    _, rstd, h_pre = fwd()

    def bwd():
        return B.launch_norm_adapter_backward(grad_y, x, norm_weight, down_weight, down_bias, up_tables, h_mask, rstd,
                                              h_pre, row_layout, True, False, True)

    defaults = (B.ROWS_BLOCK_M, B.ROWS_BLOCK_D, B.COLUMNS_BLOCK_M, B.COLUMNS_BLOCK_D, B.NUM_WARPS)
    sweep_backward(B, bwd, bwd(), defaults[:2], defaults[2:4])
    B.ROWS_BLOCK_M, B.ROWS_BLOCK_D, B.COLUMNS_BLOCK_M, B.COLUMNS_BLOCK_D, B.NUM_WARPS = defaults
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
