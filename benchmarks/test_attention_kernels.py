"""CPU benchmark of causal self-attention at SmolLM2-135M's training shape: B=4, L=256, 9 query heads over 3
key/value heads of 64, forward + backward (what one decoder layer's attention costs in a training step).

    python -m pytest benchmarks/test_attention_kernels.py --benchmark-only --benchmark-json=attention.json

Each group is one dtype and holds:
  fastmma_cpu   fastmma/ops/cpp_causal_attention.py (csrc/causal_attention.cpp): blocked C++ forward and
                backward, the backward keeping q, k, v and the log-sum-exp (no output);
  sdpa          torch.nn.functional.scaled_dot_product_attention(is_causal=True, enable_gqa=True), as
                transformers' "sdpa" calls it (it keeps the output as well).
q arrives as transformers makes it: a [B, H, L, d] view of a [B, L, H, d] projection output.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from fastmma.ops import cpp_backend, cpp_causal_attention

BATCH, HEADS, KV_HEADS, LENGTH, HEAD_DIM = 4, 9, 3, 256, 64
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ("fastmma_cpu", "sdpa")


def make_step(impl, dtype):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(BATCH, LENGTH, HEADS, HEAD_DIM, generator=generator).to(dtype).transpose(1, 2)
    key, value = (torch.randn(BATCH, KV_HEADS, LENGTH, HEAD_DIM, generator=generator).to(dtype) for _ in range(2))
    leaves = [t.requires_grad_() for t in (query, key, value)]
    grad_out = torch.randn(BATCH, LENGTH, HEADS, HEAD_DIM, generator=generator).to(dtype)       # [B, L, H, d]
    scale = HEAD_DIM ** -0.5

    def attention():
        if impl == "fastmma_cpu":
            return cpp_causal_attention.causal_attention(*leaves, scale)[0]
        return F.scaled_dot_product_attention(*leaves, is_causal=True, scale=scale, enable_gqa=True).transpose(1, 2)

    def step():
        torch.autograd.grad(attention(), leaves, grad_out)

    return step


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_causal_attention_forward_backward(benchmark, dtype_name, impl):
    if impl == "fastmma_cpu" and not cpp_backend.is_available():
        pytest.skip("fastmma's C++ extension is not built (reinstall with `pip install --no-build-isolation -e .`)")
    step = make_step(impl, DTYPES[dtype_name])
    benchmark.group = f"causal-attention-smollm2-b4-l256-{dtype_name}"
    benchmark.extra_info.update(impl=impl, dtype=dtype_name, threads=torch.get_num_threads(),
                                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""))
    benchmark.pedantic(step, rounds=30, warmup_rounds=3)
