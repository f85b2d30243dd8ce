"""Where a GPU's time goes: per-call wall time vs kernel time of the fused ops, and a training step's kernels.

    python3 benchmarks/gpu/profile_ops.py

1. rms_norm_adapter and rms_norm_adapter_linear at LLaMA-7B shapes (bench_kernels.py's inputs, bf16),
   Triton and eager torch: wall time per forward call (50 calls, then one synchronize) and a
   torch.profiler table of 10 forward + backward calls, sorted by CUDA time (kernel times per call).
2. A training step (forward, loss, backward, AdamW) at SmolLM2's dimensions in bf16 (B=4, L=256, random
   weights, benchmarks/gpu/training.py's variants) for the floor and fastmma: the profiler's table of 5
   steps, whose "Self CUDA time total" is their kernel time, to set against the step's wall time.
Without a CUDA GPU it says so and exits 0.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def profile(fn, calls: int):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return prof


def fused_ops() -> None:
    import bench_kernels

    shape = bench_kernels.Shape(4, 512, 4096, 8, 2, 2, 3 * 4096, 2)
    for op in ("rms_norm_adapter", "rms_norm_adapter_linear"):
        args = bench_kernels.make_inputs(shape, torch.bfloat16, "linear" if op.endswith("linear") else "per_sample")
        for name in ("triton", "torch"):
            fn = bench_kernels.implementations(op)[name]
            out = fn(*args)
            grad_out = torch.randn_like(out)
            out.backward(grad_out)                                    # warm-up: compiles
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(50):
                fn(*args)
            torch.cuda.synchronize()
            wall_ms = (time.perf_counter() - start) / 50 * 1e3
            prof = profile(lambda: fn(*args).backward(grad_out), 10)
            print(f"=== {op} {name}: forward wall {wall_ms:.3f} ms per call; profile of 10 forward + backward calls")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))


def training_steps() -> None:
    from training import TrainingStep, build_variant, random_base

    ids = torch.randint(0, 49152, (4, 256), generator=torch.Generator().manual_seed(0)).cuda()
    for variant in ("hf_no_adapter", "fastmma"):
        model, extra = build_variant(variant, random_base("smollm2-135m", torch.bfloat16))
        step = TrainingStep(model, extra, ids)
        for _ in range(3):
            step()
        start = time.perf_counter()
        prof = profile(step, 5)
        wall_ms = (time.perf_counter() - start) / 5 * 1e3
        print(f"=== SmolLM2 bf16 training step, {variant}: {wall_ms:.1f} ms per step under the profiler; the "
              f"table's 'Self CUDA time total' / 5 is the kernel time per step")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
        del step, model


def main() -> int:
    if not torch.cuda.is_available():
        print("profile_ops needs a CUDA GPU and none is available; nothing was profiled.")
        return 0
    fused_ops()
    training_steps()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
