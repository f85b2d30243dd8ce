"""The C++ few-rows Linear (fastmma._C.few_rows_linear_*) against fp64 PyTorch: y = x W^T + b and
grad_x = grad_y W for 1 to 8 rows, odd shapes, fp32/bf16/fp16. The kernel's error against fp64 must stay
within 2x plain PyTorch's error in the same dtype (+ a floor of a few ulps); outputs start as NaN
(poisoned), so an element the kernel forgets to write fails. Then the modality pass that uses it.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import fastmma
from fastmma.ops import cpp_backend, cpp_few_rows_linear

from ..helpers import assert_close_to_reference, randomize_adapters, tiny_causal_lm

pytestmark = [pytest.mark.skipif(not cpp_backend.is_available(),
                                 reason="fastmma's C++ extension is not built (pip install --no-build-isolation -e .)"),
              pytest.mark.usefixtures("poisoned_outputs")]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SHAPES = [(2, 576, 1536), (1, 37, 5), (8, 1037, 259), (3, 2050, 7), (5, 16, 64)]     # rows, in, out


def _operands(shape, seed):
    rows, k, n = shape
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, dtype=torch.float64, generator=generator)
    weight = torch.randn(n, k, dtype=torch.float64, generator=generator) / k ** 0.5
    bias = torch.randn(n, dtype=torch.float64, generator=generator)
    grad_y = torch.randn(rows, n, dtype=torch.float64, generator=generator)
    return x, weight, bias, grad_y


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_input_gradient_match_fp64(shape, dtype_name, with_bias):
    dtype = DTYPES[dtype_name]
    x, weight, bias, grad_y = (t.to(dtype) for t in _operands(shape, seed=sum(shape)))
    bias = bias if with_bias else None
    exact_y = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    exact_grad = grad_y.double() @ weight.double()
    plain_y, plain_grad = F.linear(x, weight, bias), grad_y @ weight
    y = cpp_backend._C.few_rows_linear_forward(x, weight, bias)
    grad_x = cpp_backend._C.few_rows_linear_backward(grad_y, weight)
    assert y.dtype == dtype and grad_x.dtype == dtype and y.shape == plain_y.shape and grad_x.shape == x.shape
    floor = 4 * torch.finfo(dtype).eps
    assert_close_to_reference(y, plain_y, exact_y, floor=floor, what="y")
    assert_close_to_reference(grad_x, plain_grad, exact_grad, floor=floor, what="grad_x")


def test_autograd_function_gives_the_input_gradient_and_none_for_the_frozen_weight():
    x, weight, bias, grad_y = (t.float() for t in _operands((2, 40, 30), seed=1))
    x.requires_grad_()
    y = cpp_few_rows_linear.FewRowsLinear.apply(x, weight, bias)
    y.backward(grad_y)
    torch.testing.assert_close(x.grad, grad_y @ weight, rtol=1e-5, atol=1e-5)


def test_results_do_not_depend_on_the_thread_count():
    x, weight, bias, grad_y = (t.float() for t in _operands((3, 3000, 700), seed=2))
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append((cpp_backend._C.few_rows_linear_forward(x, weight, bias),
                            cpp_backend._C.few_rows_linear_backward(grad_y, weight)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("problem", ["nine rows", "dtype mismatch", "feature mismatch", "bias size", "1-D x"])
def test_bad_inputs_are_named(problem):
    x, weight, bias, _ = (t.float() for t in _operands((2, 10, 6), seed=3))
    match = {"nine rows": "1 to 8", "dtype mismatch": "pass one dtype", "feature mismatch": "x has 9 features",
             "bias size": "bias has 5 elements", "1-D x": "x must have 2 dimensions"}[problem]
    if problem == "nine rows":
        x = torch.randn(9, 10)
    elif problem == "dtype mismatch":
        x = x.bfloat16()
    elif problem == "feature mismatch":
        x = x[:, :9]
    elif problem == "bias size":
        bias = bias[:5]
    else:
        x = x[0]
    with pytest.raises(RuntimeError, match=match):
        cpp_backend._C.few_rows_linear_forward(x, weight, bias)


def _modality_pass_tables_and_grads(model, autocast):
    routing = model._fastmma.routing
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        routing._run_modality_pass(model)
        tables = [t.float() for t in routing.tables]
    weights = torch.linspace(-1, 1, sum(t.numel() for t in tables), dtype=torch.float64)
    (torch.cat([t.reshape(-1) for t in tables]).double() * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return [t.detach() for t in tables], grads


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_modality_pass_with_the_kernel_matches_the_pass_without_it(autocast, monkeypatch):
    base = tiny_causal_lm("llama", num_hidden_layers=3)
    model = fastmma.patch(copy.deepcopy(base), fastmma.MMAConfig()).eval()       # eval: no dropout draws to match
    randomize_adapters(model)
    exact = copy.deepcopy(model).double()
    calls = []
    real = cpp_few_rows_linear.FewRowsLinear.apply
    monkeypatch.setattr(cpp_few_rows_linear.FewRowsLinear, "apply", lambda *a: calls.append(1) or real(*a))
    fast_tables, fast_grads = _modality_pass_tables_and_grads(model, autocast)
    assert len(calls) == 3 * 5                                        # v, o, gate, up and down in each layer
    monkeypatch.setattr(cpp_few_rows_linear, "run_dtype", lambda linear, x: None)
    plain_tables, plain_grads = _modality_pass_tables_and_grads(model, autocast)
    exact_tables, exact_grads = _modality_pass_tables_and_grads(exact, False)
    assert len(calls) == 3 * 5 and fast_grads.keys() == plain_grads.keys() == exact_grads.keys()
    for fast, plain, want in zip(fast_tables, plain_tables, exact_tables):
        assert_close_to_reference(fast, plain, want, floor=1e-6, what="router table")
    for name in fast_grads:
        assert_close_to_reference(fast_grads[name], plain_grads[name], exact_grads[name], floor=1e-6, what=name)
