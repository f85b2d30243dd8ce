"""CPU kernel benchmarks: the SwiGLU product silu(gate) * up of the frozen MLP, one forward +
backward (gate and up need gradients, as in adapter training: the gradient flows through the MLP).

    python -m pytest benchmarks/test_swiglu_kernels.py --benchmark-only --benchmark-json=swiglu.json

Each group is one shape [tokens, intermediate] and dtype and holds:
  fused_cpp           fastmma's C++ kernel (one pass forward, one backward; keeps gate and up);
  autograd            F.silu(gate) * up with autograd (what Hugging Face's MLP runs; keeps gate, silu(gate), up);
  recomputing_torch   fastmma's torch fallback (keeps gate and up, recomputes silu in backward);
  compiled            torch.compile of the autograd form.
Shapes: SmolLM2-135M at B=4, L=256 (1024 x 1536) and LLaMA-7B at B=1, L=512 (512 x 11008).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from fastmma.memory.swiglu import _SwiGLU
from fastmma.ops import cpp_backend, cpp_swiglu

SHAPES = {"1024x1536": (1024, 1536), "512x11008": (512, 11008)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ("fused_cpp", "autograd", "recomputing_torch", "compiled")


def plain(gate, up):
    return F.silu(gate) * up


def implementation(impl):
    if impl == "fused_cpp":
        return cpp_swiglu.cpp_swiglu
    if impl == "recomputing_torch":
        return _SwiGLU.apply
    if impl == "compiled":
        return torch.compile(plain)
    return plain


def make_step(impl, shape, dtype):
    generator = torch.Generator().manual_seed(0)
    gate = (3 * torch.randn(shape, generator=generator)).to(dtype).requires_grad_()
    up = torch.randn(shape, generator=generator).to(dtype).requires_grad_()
    grad_out = torch.randn(shape, generator=generator).to(dtype)
    fn = implementation(impl)

    def step():
        gate.grad = up.grad = None
        fn(gate, up).backward(grad_out)

    return step


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_swiglu_forward_backward(benchmark, shape_name, dtype_name, impl):
    if impl == "fused_cpp" and not cpp_backend.is_available():
        pytest.skip("fastmma's C++ extension is not built (reinstall with `pip install --no-build-isolation -e .`)")
    step = make_step(impl, SHAPES[shape_name], DTYPES[dtype_name])
    benchmark.group = f"swiglu-{shape_name}-{dtype_name}"
    benchmark.extra_info.update(impl=impl, shape=shape_name, dtype=dtype_name, threads=torch.get_num_threads(),
                                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""))
    benchmark.pedantic(step, rounds=30, warmup_rounds=3)
