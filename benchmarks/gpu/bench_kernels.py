"""Time the Triton kernels against the reference and torch.compile of the plain-PyTorch path.

    python benchmarks/gpu/bench_kernels.py                  # LLaMA-7B shapes: M = 4 x 512, D = 4096, r = 8
    python benchmarks/gpu/bench_kernels.py --analytical     # only the bytes / FLOPs model (no GPU needed)

Every fused op is timed forward and backward (triton.testing.do_bench, median ms) for four
implementations: triton, reference (fastmma/reference.py), torch (eager) and torch.compile
of the torch path. Each row prints the achieved GB/s and TFLOP/s, computed from the fused
kernels' analytical bytes and useful FLOPs (docs/kernels.md), and the floor: the op's
unavoidable bytes divided by the bandwidth of a device-to-device copy measured here.
Without a CUDA GPU it says so and exits 0.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PARAM_BYTES = 4                       # adapter parameters are fp32


@dataclass(frozen=True)
class Shape:
    batch: int
    length: int
    hidden: int
    rank: int
    groups: int
    experts: int
    out_features: int
    act_bytes: int                    # bytes per activation element (2 for bf16)

    @property
    def rows(self) -> int:
        return self.batch * self.length

    @property
    def rank_per_group(self) -> int:
        return self.rank // self.groups


@dataclass(frozen=True)
class Cost:
    fused_bytes: int                  # what the Triton path moves to and from DRAM
    floor_bytes: int                  # the op's unavoidable inputs and outputs
    unfused_bytes: int                # one kernel per stage, intermediates written in the activation dtype
    flops: int                        # useful FLOPs (no padding)


def adapter_param_bytes(s: Shape, tables: int) -> int:
    """norm_weight, A, a, and `tables` up-projection tables [D, r/G] with biases [D]."""
    return (s.hidden * s.act_bytes + (s.rank * s.hidden + s.rank) * PARAM_BYTES
            + tables * s.hidden * (s.rank_per_group + 1) * PARAM_BYTES)


def norm_adapter_forward_cost(s: Shape, tables: int) -> Cost:
    act = s.rows * s.hidden * s.act_bytes                     # one [M, D] activation
    small = s.rows * (4 + s.rank * 4 + s.rank * s.act_bytes)  # rstd and h_pre written, dropout mask read
    params = adapter_param_bytes(s, tables)
    flops = s.rows * s.hidden * (6 + 2 * s.rank + 2 * s.rank_per_group)   # norm + A n + U h + adds
    return Cost(fused_bytes=2 * act + small + params, floor_bytes=2 * act + params,
                unfused_bytes=4 * act + small + params, flops=flops)     # unfused: n written, then read


def norm_adapter_backward_cost(s: Shape, tables: int) -> Cost:
    act = s.rows * s.hidden * s.act_bytes
    small = s.rows * (4 + 2 * s.rank * 4 + s.rank * s.act_bytes + 4 + s.rank * 4)   # rstd, h_pre, mask; dz, sum(dn n)
    params = 2 * adapter_param_bytes(s, tables)                                      # read, and gradients written
    flops = s.rows * s.hidden * (13 + 4 * s.rank + 4 * s.rank_per_group)
    # fused: x and dy read by the rows kernel and again by the columns kernel, dx written;
    # unfused: adapter backward reads dy, n and writes dn, then the norm backward reads dn, x and writes dx.
    return Cost(fused_bytes=5 * act + small + params, floor_bytes=3 * act + params,
                unfused_bytes=6 * act + small + params, flops=flops)


def linear_forward_cost(s: Shape) -> Cost:
    act = s.rows * s.hidden * s.act_bytes
    small = s.rows * (4 + s.rank * 4 + s.rank * s.act_bytes)
    params = adapter_param_bytes(s, s.batch)
    gemm = (s.out_features * s.hidden + s.rows * s.out_features + s.out_features) * s.act_bytes   # W, out, bias
    flops = norm_adapter_forward_cost(s, s.batch).flops + 2 * s.rows * s.hidden * s.out_features
    # fused: the stats pass reads x, the GEMM reads x again (y never exists);
    # unfused: the norm + adapter kernel reads x and writes y, the GEMM reads y.
    return Cost(fused_bytes=2 * act + small + params + gemm, floor_bytes=act + params + gemm,
                unfused_bytes=3 * act + small + params + gemm, flops=flops)


def linear_backward_cost(s: Shape) -> Cost:
    """dy = dOut W (a GEMM writing dy [M, D]), then the norm + adapter backward; W frozen."""
    norm = norm_adapter_backward_cost(s, s.batch)
    grad_gemm = (s.rows * s.out_features + s.out_features * s.hidden + s.rows * s.hidden) * s.act_bytes  # dOut, W, dy
    flops = norm.flops + 2 * s.rows * s.hidden * s.out_features
    return Cost(fused_bytes=norm.fused_bytes + grad_gemm, floor_bytes=norm.floor_bytes + grad_gemm,
                unfused_bytes=norm.unfused_bytes + grad_gemm, flops=flops)


def costs(s: Shape, decode: Shape) -> dict[tuple[str, str], Cost]:
    return {
        ("rms_norm_adapter", "forward"): norm_adapter_forward_cost(s, s.batch),
        ("rms_norm_adapter", "backward"): norm_adapter_backward_cost(s, s.batch),
        ("rms_norm_adapter_by_expert", "forward"): norm_adapter_forward_cost(s, s.experts),
        ("rms_norm_adapter_by_expert", "backward"): norm_adapter_backward_cost(s, s.experts),
        ("rms_norm_adapter_linear", "forward"): linear_forward_cost(s),
        ("rms_norm_adapter_linear", "backward"): linear_backward_cost(s),
        ("rms_norm_adapter (decode)", "forward"): norm_adapter_forward_cost(decode, decode.batch),
    }


def print_analytical(s: Shape, decode: Shape) -> None:
    print(f"M = {s.rows}, D = {s.hidden}, r = {s.rank}, G = {s.groups}, E = {s.experts}, N = {s.out_features}, "
          f"{s.act_bytes}-byte activations; decode M = {decode.rows}")
    print("| op | pass | fused MB | floor MB | unfused MB | useful GFLOP |")
    print("|---|---|---:|---:|---:|---:|")
    for (op, direction), cost in costs(s, decode).items():
        print(f"| {op} | {direction} | {cost.fused_bytes / 1e6:.2f} | {cost.floor_bytes / 1e6:.2f} | "
              f"{cost.unfused_bytes / 1e6:.2f} | {cost.flops / 1e9:.4g} |")


def make_inputs(s: Shape, dtype: torch.dtype, routing: str, device: str = "cuda"):
    """Random inputs: activations in `dtype`, adapter parameters fp32 with gradients."""
    param = lambda *shape, std=1.0: (std * torch.randn(*shape, device=device)).requires_grad_()  # noqa: E731
    x = torch.randn(s.batch, s.length, s.hidden, device=device, dtype=dtype, requires_grad=True)
    norm_weight = (1 + 0.1 * torch.randn(s.hidden, device=device)).to(dtype).requires_grad_()
    args = [x, norm_weight, 1e-5, param(s.rank, s.hidden, std=s.hidden ** -0.5), param(s.rank, std=0.1),
            param(s.experts, s.hidden, s.rank_per_group, std=0.3), param(s.experts, s.hidden, std=0.1)]
    if routing == "per_token":
        args.append(torch.randint(0, s.experts, (s.batch, s.length), device=device))
    else:
        args.append(torch.softmax(torch.randn(s.batch, s.experts, device=device), -1).requires_grad_())
    keep = torch.rand(s.batch, s.length, s.rank, device=device) > 0.1
    args += [1.0, (keep.to(dtype) / 0.9)]
    if routing == "linear":
        args += [torch.randn(s.out_features, s.hidden, device=device, dtype=dtype) * s.hidden ** -0.5, None]
    return args


def implementations(op: str):
    from fastmma import reference
    from fastmma.ops import norm_adapter, norm_adapter_linear, triton_backend

    table = {
        "rms_norm_adapter": (triton_backend.triton_rms_norm_adapter, reference.norm_adapter_reference,
                             norm_adapter.torch_rms_norm_adapter),
        "rms_norm_adapter_by_expert": (triton_backend.triton_rms_norm_adapter_by_expert,
                                       reference.norm_adapter_by_expert_reference,
                                       norm_adapter.torch_rms_norm_adapter_by_expert),
        "rms_norm_adapter_linear": (triton_backend.triton_rms_norm_adapter_linear,
                                    norm_adapter_linear.reference_rms_norm_adapter_linear,
                                    norm_adapter_linear.torch_rms_norm_adapter_linear),
    }
    fast, ref, plain = table[op.replace(" (decode)", "")]
    return {"triton": fast, "reference": ref, "torch": plain, "torch.compile": torch.compile(plain)}


def time_forward_backward(fn, args, with_backward: bool) -> tuple[float, float | None]:
    """Median ms of the forward (no autograd when not with_backward) and of the backward."""
    from triton.testing import do_bench

    if not with_backward:
        with torch.no_grad():
            fn(*args)                                                   # warm-up: compiles, autotunes
            return do_bench(lambda: fn(*args), return_mode="median"), None
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    out = fn(*args)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)                                              # warm-up of both passes
    forward_ms = do_bench(lambda: fn(*args), return_mode="median")
    out = fn(*args)
    backward_ms = do_bench(lambda: out.backward(grad_out, retain_graph=True), grad_to_none=leaves,
                           return_mode="median")
    return forward_ms, backward_ms


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes per second of a device-to-device copy: the practical DRAM bandwidth of this GPU."""
    from triton.testing import do_bench

    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    return 2 * nbytes / (do_bench(lambda: dst.copy_(src), return_mode="median") * 1e-3)


def run_benchmarks(s: Shape, decode: Shape, dtype: torch.dtype) -> None:
    torch._functorch.config.donated_buffer = False    # torch.compile's backward is timed with retain_graph=True
    bandwidth = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    print(f"{'op':28s} {'pass':8s} {'impl':14s} {'ms':>9s} {'GB/s':>8s} {'TFLOP/s':>8s} {'floor ms':>9s}")
    model = costs(s, decode)
    for op in ("rms_norm_adapter", "rms_norm_adapter_by_expert", "rms_norm_adapter_linear",
               "rms_norm_adapter (decode)"):
        decoding = op.endswith("(decode)")
        routing = {"rms_norm_adapter_by_expert": "per_token", "rms_norm_adapter_linear": "linear"}.get(op, "per_sample")
        args = make_inputs(decode if decoding else s, dtype, routing)
        for impl, fn in implementations(op).items():
            timings = time_forward_backward(fn, args, with_backward=not decoding)
            for direction, ms in zip(("forward", "backward"), timings):
                if ms is None:
                    continue
                cost = model[(op, direction)]
                floor_ms = cost.floor_bytes / bandwidth * 1e3
                print(f"{op:28s} {direction:8s} {impl:14s} {ms:9.4f} {cost.fused_bytes / ms / 1e6:8.0f} "
                      f"{cost.flops / ms / 1e9:8.2f} {floor_ms:9.4f}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--experts", type=int, default=2)
    parser.add_argument("--out-features", type=int, default=3 * 4096, help="q/k/v concatenated")
    parser.add_argument("--decode-rows", type=int, default=4, help="rows (one token per sample) of the decode case")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--analytical", action="store_true", help="print the bytes / FLOPs model and exit")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    dtype = DTYPES[args.dtype]
    act_bytes = torch.finfo(dtype).bits // 8
    shape = Shape(args.batch, args.length, args.hidden, args.rank, args.groups, args.experts, args.out_features,
                  act_bytes)
    decode = Shape(args.decode_rows, 1, args.hidden, args.rank, args.groups, args.experts, args.out_features,
                   act_bytes)
    if args.analytical:
        print_analytical(shape, decode)
        return 0
    if not torch.cuda.is_available():
        print("bench_kernels needs a CUDA GPU and none is available; nothing was timed "
              "(run with --analytical for the bytes / FLOPs model).")
        return 0
    run_benchmarks(shape, decode, dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
