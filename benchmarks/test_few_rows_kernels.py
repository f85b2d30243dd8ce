"""CPU benchmark of the modality pass's frozen Linear layers: two rows (one per modality) through every
Linear of SmolLM2-135M's 30 layers that the pass runs (v_proj, o_proj, gate_proj, up_proj, down_proj), forward
+ input gradient, as the pass does in training.

    python -m pytest benchmarks/test_few_rows_kernels.py --benchmark-only --benchmark-json=few_rows.json

Each group is one dtype and holds:
  few_rows_cpp    fastmma's C++ kernel (each weight row read once for both rows);
  linear          F.linear with autograd (a GEMM per call).
The weights (30 x 12.4M floats in fp32, 447 MB) do not fit in any cache: each call streams its weight.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from fastmma.ops import cpp_backend, cpp_few_rows_linear

LAYERS, ROWS, HIDDEN, KV, INTERMEDIATE = 30, 2, 576, 192, 1536
SHAPES = [(KV, HIDDEN), (HIDDEN, HIDDEN), (INTERMEDIATE, HIDDEN), (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ("few_rows_cpp", "linear")


def make_step(impl, dtype):
    generator = torch.Generator().manual_seed(0)
    weights = [(torch.randn(shape, generator=generator) / shape[1] ** 0.5).to(dtype)
               for _ in range(LAYERS) for shape in SHAPES]
    inputs = [torch.randn(ROWS, w.shape[1], generator=generator).to(dtype).requires_grad_() for w in weights]
    grads = [torch.randn(ROWS, w.shape[0], generator=generator).to(dtype) for w in weights]
    linear = cpp_few_rows_linear.FewRowsLinear.apply if impl == "few_rows_cpp" else \
        (lambda x, w, b: F.linear(x, w, b))

    def step():
        for x, weight, grad in zip(inputs, weights, grads):
            x.grad = None
            linear(x, weight, None).backward(grad)

    return step


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_modality_pass_linears_forward_backward(benchmark, dtype_name, impl):
    if impl == "few_rows_cpp" and not cpp_backend.is_available():
        pytest.skip("fastmma's C++ extension is not built (reinstall with `pip install --no-build-isolation -e .`)")
    step = make_step(impl, DTYPES[dtype_name])
    benchmark.group = f"few-rows-linear-2x30layers-{dtype_name}"
    benchmark.extra_info.update(impl=impl, dtype=dtype_name, threads=torch.get_num_threads(),
                                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""))
    benchmark.pedantic(step, rounds=20, warmup_rounds=2)
