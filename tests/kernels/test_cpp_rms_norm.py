"""The C++ input gradient of the frozen RMSNorm (fastmma/ops/cpp_rms_norm.py, used by fastmma.memory.rmsnorm's
backward) against fp64: x's gradient through reference.rms_norm_reference, on odd row lengths, in
fp32/bf16/fp16, within 2x plain PyTorch's error in the same dtype (+ a tiny floor). Outputs start as NaN
(poisoned), so an element the kernel forgets to write fails.
"""
from __future__ import annotations

import pytest
import torch

from fastmma.memory.rmsnorm import rms_norm
from fastmma.ops import cpp_backend, cpp_rms_norm
from fastmma.reference import rms_norm_reference

from ..helpers import assert_close_to_reference, assert_same_bits_with_one_and_two_threads

pytestmark = [pytest.mark.skipif(not cpp_backend.is_available(),
                                 reason="fastmma's C++ extension is not built (pip install --no-build-isolation -e .)"),
              pytest.mark.usefixtures("poisoned_outputs")]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SHAPES = [(3, 5, 37), (1, 1), (2, 1037), (4, 9, 576), (7,)]       # tails shorter than a SIMD pack, one element
EPS = 1e-5


def _inputs(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=torch.float64, generator=generator) * 2 + 0.5
    weight = torch.rand(shape[-1], dtype=torch.float64, generator=generator) + 0.5
    grad_y = torch.randn(shape, dtype=torch.float64, generator=generator)
    return x, weight, grad_y


def _x_grad(fn, x, weight, grad_y, dtype):
    x = x.detach().to(dtype).requires_grad_()
    out = fn(x, weight.to(dtype), EPS)
    out.backward(grad_y.to(dtype))
    return out.detach(), x.grad


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_input_gradient_matches_fp64_within_plain_pytorch_error(shape, dtype):
    x, weight, grad_y = _inputs(shape, seed=len(shape) * 100 + shape[-1])
    exact = _x_grad(rms_norm_reference, x, weight, grad_y, torch.float64)
    plain = _x_grad(rms_norm_reference, x, weight, grad_y, dtype)
    fast = _x_grad(rms_norm, x, weight, grad_y, dtype)
    assert torch.equal(fast[0], plain[0])                    # the forward is Hugging Face's ops, bit for bit
    assert fast[1].dtype == dtype and fast[1].shape == exact[1].shape
    assert_close_to_reference(fast[1], plain[1], exact[1], what=f"grad_x {dtype} {shape}")


def test_the_kernel_runs_for_a_frozen_weight_and_torch_for_a_trained_one(monkeypatch):
    x, weight, grad_y = (t.float() for t in _inputs((4, 33), seed=1))
    calls = []
    original = cpp_rms_norm.input_grad
    monkeypatch.setattr(cpp_rms_norm, "input_grad", lambda *a: calls.append(1) or original(*a))
    frozen = _x_grad(rms_norm, x, weight, grad_y, torch.float32)[1]
    assert calls == [1]
    trained_weight = weight.clone().requires_grad_()
    x_leaf = x.clone().requires_grad_()
    rms_norm(x_leaf, trained_weight, EPS).backward(grad_y)
    assert calls == [1]                                      # the weight's gradient needs the torch path
    torch.testing.assert_close(x_leaf.grad, frozen, rtol=1e-5, atol=1e-6)
    expected_weight_grad = (grad_y * rms_norm_reference(x, torch.ones_like(weight), EPS)).sum(0)
    torch.testing.assert_close(trained_weight.grad, expected_weight_grad, rtol=1e-5, atol=1e-5)


def test_the_same_bits_for_one_and_two_threads():
    x, weight, grad_y = (t.float() for t in _inputs((64, 300), seed=2))
    assert_same_bits_with_one_and_two_threads(lambda: _x_grad(rms_norm, x, weight, grad_y, torch.float32))


@pytest.mark.parametrize("call,message", [
    (lambda C: C.rms_norm_input_grad(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(4, dtype=torch.float64),
                                     torch.zeros(2, 1)), "share one dtype"),
    (lambda C: C.rms_norm_input_grad(torch.zeros(2, 4), torch.zeros(2, 5), torch.zeros(5), torch.zeros(2, 1)),
     "of one shape"),
    (lambda C: C.rms_norm_input_grad(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(3), torch.zeros(2, 1)),
     "weight must be"),
    (lambda C: C.rms_norm_input_grad(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(4), torch.zeros(3, 1)),
     "one value per row"),
])
def test_bad_inputs_name_the_problem(call, message):
    with pytest.raises(RuntimeError, match=message):
        call(cpp_backend._C)
