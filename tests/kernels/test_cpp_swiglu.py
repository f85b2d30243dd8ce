"""The C++ SwiGLU kernel (fastmma._C.swiglu_*) against fp64 PyTorch: silu(gate) * up, forward and
both gradients, on odd shapes, in fp32/bf16/fp16. The kernel's error against fp64 must stay within
2x plain PyTorch's error in the same dtype (+ a tiny floor). Outputs start as NaN (poisoned), so
an element the kernel forgets to write fails.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import fastmma
from fastmma.memory import swiglu
from fastmma.ops import cpp_backend, cpp_swiglu

from ..helpers import assert_close_to_reference, randomize_adapters, tiny_causal_lm

pytestmark = [pytest.mark.skipif(not cpp_backend.is_available(),
                                 reason="fastmma's C++ extension is not built (pip install --no-build-isolation -e .)"),
              pytest.mark.usefixtures("poisoned_outputs")]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SHAPES = [(3, 5, 37), (1, 1), (2, 1037), (4, 64, 96), (7,)]      # tails shorter than a SIMD pack, blocks, one element


def _inputs(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    gate = torch.randn(shape, dtype=torch.float64, generator=generator) * 3       # covers silu's bend and tails
    up = torch.randn(shape, dtype=torch.float64, generator=generator)
    grad_out = torch.randn(shape, dtype=torch.float64, generator=generator)
    return gate, up, grad_out


def _run(fn, gate, up, grad_out, dtype):
    gate = gate.detach().to(dtype).requires_grad_()
    up = up.detach().to(dtype).requires_grad_()
    out = fn(gate, up)
    out.backward(grad_out.to(dtype))
    return out.detach(), gate.grad, up.grad


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_kernel_matches_fp64_within_plain_pytorch_error(shape, dtype):
    gate, up, grad_out = _inputs(shape, seed=len(shape) * 100 + shape[-1])
    exact = _run(lambda g, u: F.silu(g) * u, gate, up, grad_out, torch.float64)
    plain = _run(lambda g, u: F.silu(g) * u, gate, up, grad_out, dtype)
    fast = _run(cpp_swiglu.cpp_swiglu, gate, up, grad_out, dtype)
    for name, f, p, e in zip(("out", "grad_gate", "grad_up"), fast, plain, exact):
        assert f.dtype == dtype and f.shape == e.shape, name
        assert_close_to_reference(f, p, e, what=f"{name} {dtype} {shape}")


def test_only_the_gradients_asked_for_are_computed():
    gate, up, grad_out = _inputs((4, 33), seed=1)
    gate32, up32 = gate.float(), up.float().requires_grad_()       # gate needs no gradient
    out = cpp_swiglu.cpp_swiglu(gate32, up32)
    out.backward(grad_out.float())
    torch.testing.assert_close(up32.grad, (grad_out * F.silu(gate)).float(), rtol=1e-5, atol=1e-6)
    grad_gate, grad_up = cpp_backend._C.swiglu_backward(grad_out.float(), gate32, up32.detach(), False, True)
    assert grad_gate is None and grad_up is not None


def test_extreme_and_non_finite_gates_behave_like_pytorch():
    gate = torch.tensor([-1e4, -200.0, -88.5, -87.0, -20.0, -1e-6, 0.0, 1e-6, 20.0, 87.0, 89.0, 1e4, float("inf"),
                         float("nan")])
    up = torch.linspace(0.5, 2.0, gate.numel())
    expected = F.silu(gate.double()) * up.double()
    got = cpp_backend._C.swiglu_forward(gate, up)
    finite = expected.isfinite()
    torch.testing.assert_close(got.double()[finite], expected[finite], rtol=1e-6, atol=1e-30)
    assert got[-2] == float("inf") and got[-1].isnan()


def test_non_contiguous_views_of_one_projection_output():
    """gate and up as the two halves of one fused projection output: strided views."""
    gate_up = torch.randn(5, 7, 2 * 24, generator=torch.Generator().manual_seed(3))
    gate, up = gate_up.chunk(2, dim=-1)
    assert not gate.is_contiguous()
    torch.testing.assert_close(cpp_swiglu.cpp_swiglu(gate, up), F.silu(gate) * up, rtol=1e-6, atol=1e-6)


def test_bad_operands_name_the_problem():
    gate = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="up is"):
        cpp_backend._C.swiglu_forward(gate, torch.randn(3, 5))
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        cpp_backend._C.swiglu_forward(gate.double(), gate.double())


def test_swiglu_dispatch_uses_the_kernel_and_honours_the_backend_switch(monkeypatch):
    calls = []
    original = cpp_backend._C.swiglu_forward
    monkeypatch.setattr(cpp_swiglu, "_C", type("Spy", (), {
        "swiglu_forward": staticmethod(lambda *a: calls.append(1) or original(*a)),
        "swiglu_backward": staticmethod(cpp_backend._C.swiglu_backward)}))
    gate, up = torch.randn(2, 8), torch.randn(2, 8)
    swiglu(gate, up)
    assert calls == [1]
    swiglu(gate.double(), up.double())                 # fp64: the torch path
    monkeypatch.setenv("FASTMMA_BACKEND", "torch")
    swiglu(gate, up)
    assert calls == [1]


def test_patched_model_with_the_kernel_matches_the_torch_path(monkeypatch):
    base = tiny_causal_lm("llama")
    model = fastmma.patch(copy.deepcopy(base), fastmma.MMAConfig(targets=("attn", "ffn"), dropout=0.0))
    randomize_adapters(model, std=0.05)
    ids = torch.randint(3, 97, (2, 11), generator=torch.Generator().manual_seed(5))

    def loss_and_grads():
        model.zero_grad()
        loss = model(ids, labels=ids, modality=torch.tensor([0, 1])).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in fastmma.adapter_parameters(model).items()}

    loss_fast, grads_fast = loss_and_grads()
    monkeypatch.setenv("FASTMMA_BACKEND", "torch")
    loss_torch, grads_torch = loss_and_grads()
    assert loss_fast == pytest.approx(loss_torch, rel=1e-5)
    for name, grad in grads_torch.items():
        torch.testing.assert_close(grads_fast[name], grad, rtol=1e-4, atol=1e-6)
