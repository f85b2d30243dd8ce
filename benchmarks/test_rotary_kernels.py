"""CPU benchmark of the rotary position embedding of one decoder layer's q and k at SmolLM2-135M's training
shape: B=4, L=256, 9 query heads and 3 key/value heads of 64, forward + backward.

    python -m pytest benchmarks/test_rotary_kernels.py --benchmark-only --benchmark-json=rotary.json

Each group is one dtype and holds:
  fastmma_cpu   fastmma/ops/cpp_rotary.py (csrc/rotary.cpp): one pass over each projection forward, one
                over each gradient backward;
  transformers  transformers' apply_rotary_pos_emb (LlamaAttention's own call): x * cos + rotate_half(x) * sin
                in tensor ops, and autograd's backward of them.
q and k arrive as the projections make them: [B, L, heads * d] rows.
"""
from __future__ import annotations

import os

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from fastmma.ops import cpp_backend, cpp_rotary

BATCH, LENGTH, HEADS, KV_HEADS, HEAD_DIM = 4, 256, 9, 3, 64
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ("fastmma_cpu", "transformers")


def make_step(impl, dtype):
    generator = torch.Generator().manual_seed(0)
    query_rows = torch.randn(BATCH, LENGTH, HEADS, HEAD_DIM, generator=generator).to(dtype).requires_grad_()
    key_rows = torch.randn(BATCH, LENGTH, KV_HEADS, HEAD_DIM, generator=generator).to(dtype).requires_grad_()
    angles = torch.arange(LENGTH, dtype=torch.float32)[:, None] * 10000 ** (-torch.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    angles = torch.cat([angles, angles], dim=-1)[None]                                      # [1, L, d]
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    grads = [torch.randn(BATCH, heads, LENGTH, HEAD_DIM, generator=generator).to(dtype) for heads in (HEADS, KV_HEADS)]

    def rotate():
        if impl == "fastmma_cpu":
            return (cpp_rotary.cpp_rotary(query_rows, cos, sin).transpose(1, 2),
                    cpp_rotary.cpp_rotary(key_rows, cos, sin).transpose(1, 2))
        return apply_rotary_pos_emb(query_rows.transpose(1, 2), key_rows.transpose(1, 2), cos, sin)

    def step():
        torch.autograd.grad(rotate(), (query_rows, key_rows), grads)

    return step


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_rotary_forward_backward(benchmark, dtype_name, impl):
    if impl == "fastmma_cpu" and not cpp_backend.is_available():
        pytest.skip("fastmma's C++ extension is not built (reinstall with `pip install --no-build-isolation -e .`)")
    step = make_step(impl, DTYPES[dtype_name])
    benchmark.group = f"rotary-smollm2-b4-l256-{dtype_name}"
    benchmark.extra_info.update(impl=impl, dtype=dtype_name, threads=torch.get_num_threads(),
                                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""))
    benchmark.pedantic(step, rounds=50, warmup_rounds=5)
