"""CPU kernel benchmarks: the fused RMSNorm + MMA adapter, one forward + backward, four ways.

    python -m pytest benchmarks --benchmark-only --benchmark-json=kernels.json
    python benchmarks/plot_kernels.py kernels.json kernels.png

Each benchmark group is one shape and dtype (LaVIN's adapter: r=8, G=2, E=2, dropout mask on h,
per-sample router weights; x, A, a, U, c and the router weights need gradients, the norm
weight is frozen) and holds:
  fused_cpp             fastmma's C++ kernels (the "cpp" backend);
  lavin_reference       fastmma.reference in LaVIN's layout (grouped 1x1 Conv1d over [B, D, L]);
                        in the bf16 groups it runs in fp32, because bf16 Conv1d weight-gradients
                        fail on CPU, and is labelled "lavin_reference[fp32]";
  nn_linear             the op written the plain way: nn.Linear down, one dense nn.Linear up per expert;
  nn_linear_compiled    torch.compile of nn_linear.
Never collected by the plain `pytest` run (its testpaths is tests/). benchmarks/conftest.py sets the
thread count and OpenMP's wait policy; both are saved with each result.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from fastmma import reference
from fastmma.ops import cpp_backend

RANK, GROUPS, EXPERTS, SCALE, EPS, DROPOUT = 8, 2, 2, 1.0, 1e-5, 0.1
SHAPES = {"4x256x576": (4, 256, 576), "4x512x4096": (4, 512, 4096)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ("fused_cpp", "lavin_reference", "nn_linear", "nn_linear_compiled")
ROUNDS = {"4x256x576": 20, "4x512x4096": 15}


class LinearAdapter(nn.Module):
    """RMSNorm + MMA adapter as most people would first write it, with nn.Linear layers."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm_weight = nn.Parameter(torch.ones(hidden), requires_grad=False)
        self.down = nn.Linear(hidden, RANK)
        self.ups = nn.ModuleList(nn.Linear(RANK, hidden) for _ in range(EXPERTS))   # dense [D, r] each

    def forward(self, x, router_weights, h_mask):
        x32 = x.float()
        normalized = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + EPS)
        normed = self.norm_weight * normalized.to(x.dtype)                               # [B, L, D]
        h = self.down(normed) * h_mask                                                   # [B, L, r]
        out = normed
        for expert, up in enumerate(self.ups):
            out = out + SCALE * router_weights[:, expert, None, None].to(x.dtype) * up(h)
        return out


def adapter_inputs(shape, dtype):
    """Fresh random inputs; adapter parameters stay fp32 as in training."""
    batch, length, hidden = shape
    generator = torch.Generator().manual_seed(0)
    randn = lambda *size: torch.randn(*size, generator=generator)  # noqa: E731
    keep = torch.rand(batch, length, RANK, generator=generator) >= DROPOUT
    return dict(
        x=randn(batch, length, hidden).to(dtype).requires_grad_(),
        norm_weight=(1 + 0.1 * randn(hidden)).to(dtype),
        down_weight=(randn(RANK, hidden) / hidden ** 0.5).requires_grad_(),
        down_bias=(0.1 * randn(RANK)).requires_grad_(),
        up_weight=(0.3 * randn(EXPERTS, hidden, RANK // GROUPS)).requires_grad_(),
        up_bias=(0.1 * randn(EXPERTS, hidden)).requires_grad_(),
        router_weights=torch.softmax(randn(batch, EXPERTS), -1).requires_grad_(),
        h_mask=(keep.float() / (1 - DROPOUT)).to(dtype),
        grad_y=randn(batch, length, hidden).to(dtype),
    )


def functional_step(op, inputs):
    """One forward + backward of an op with rms_norm_adapter's signature."""
    names = ("x", "down_weight", "down_bias", "up_weight", "up_bias", "router_weights")

    def step():
        for name in names:
            inputs[name].grad = None
        y = op(inputs["x"], inputs["norm_weight"], EPS, inputs["down_weight"], inputs["down_bias"],
               inputs["up_weight"], inputs["up_bias"], inputs["router_weights"], SCALE, inputs["h_mask"])
        y.backward(inputs["grad_y"])

    return step


def module_step(module, inputs):
    def step():
        module.zero_grad(set_to_none=True)
        inputs["x"].grad = inputs["router_weights"].grad = None
        y = module(inputs["x"], inputs["router_weights"], inputs["h_mask"])
        y.backward(inputs["grad_y"])

    return step


def in_dtype(inputs, dtype):
    """The same inputs, every tensor of x's dtype moved to `dtype` (leaves stay leaves)."""
    x_dtype = inputs["x"].dtype
    return {name: (t.detach().to(dtype).requires_grad_(t.requires_grad) if t.dtype == x_dtype else t)
            for name, t in inputs.items()}


def make_step(impl, shape, dtype):
    """(label, step function) for one implementation."""
    inputs = adapter_inputs(shape, dtype)
    if impl == "fused_cpp":
        return impl, functional_step(cpp_backend.cpp_rms_norm_adapter, inputs)
    if impl == "lavin_reference":
        if dtype == torch.bfloat16:
            return "lavin_reference[fp32]", functional_step(reference.norm_adapter_reference,
                                                            in_dtype(inputs, torch.float32))
        return impl, functional_step(reference.norm_adapter_reference, inputs)
    module = LinearAdapter(shape[-1]).to(dtype)
    if impl == "nn_linear_compiled":
        module = torch.compile(module)
    return impl, module_step(module, inputs)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_norm_adapter_forward_backward(benchmark, shape_name, dtype_name, impl):
    if impl == "fused_cpp" and not cpp_backend.is_available():
        pytest.skip("fastmma's C++ extension is not built (reinstall with `pip install --no-build-isolation -e .`)")
    label, step = make_step(impl, SHAPES[shape_name], DTYPES[dtype_name])
    benchmark.group = f"{shape_name}-{dtype_name}"
    benchmark.extra_info.update(impl=label, shape=shape_name, dtype=dtype_name, rank=RANK, groups=GROUPS,
                                experts=EXPERTS, threads=torch.get_num_threads(),
                                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""))
    benchmark.pedantic(step, rounds=ROUNDS[shape_name], warmup_rounds=2)
