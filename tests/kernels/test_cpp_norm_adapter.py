"""The C++ CPU kernels (fastmma._C) against the fp64 LaVIN-layout oracle.

Each case runs the op three ways on the same random inputs: the fp64 reference (exact),
plain PyTorch in the case's dtype (plain) and the C++ backend in that dtype (fast), forward
and every gradient. The fast error must stay within 2x the plain error (+ a tiny floor).
Every output the kernels allocate starts out as NaN, so an unwritten element fails.
"""
from __future__ import annotations

import pytest
import torch

import fastmma
from fastmma import reference
from fastmma.ops import cpp_backend, norm_adapter

from ..helpers import assert_close_to_reference, randomize_adapters, tiny_causal_lm
from .inputs import assert_backend_matches_reference, make_inputs

pytestmark = [pytest.mark.skipif(not cpp_backend.is_available(),
                                 reason="fastmma's C++ extension is not built (pip install --no-build-isolation -e .)"),
              pytest.mark.usefixtures("poisoned_outputs")]

EPS = 1e-5
SCALE = 0.7
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ROUTINGS = {
    "per_sample": (cpp_backend.cpp_rms_norm_adapter, norm_adapter.torch_rms_norm_adapter,
                   reference.norm_adapter_reference),
    "per_token": (cpp_backend.cpp_rms_norm_adapter_by_expert, norm_adapter.torch_rms_norm_adapter_by_expert,
                  reference.norm_adapter_by_expert_reference),
}
# (batch, length, hidden, rank, groups, experts): odd sizes, group widths that are not a multiple of the
# SIMD width, rows that do not fill the last tile; every rank in {4, 8, 16, 32}, groups and experts in {1, 2, 4}.
SHAPES = [
    (3, 13, 200, 8, 2, 2),
    (2, 7, 100, 4, 4, 1),
    (3, 5, 200, 16, 1, 4),
    (1, 9, 328, 32, 4, 2),
    (2, 11, 72, 32, 2, 4),
]
ACTIVATION_INPUTS = ("x", "norm_weight", "h_mask")   # in the case's dtype; adapter parameters stay fp32


def cast_inputs(inputs, activation_dtype, parameter_dtype=torch.float32):
    """Activations (x, norm_weight, h_mask) in activation_dtype, adapter parameters in parameter_dtype."""
    cast = {}
    for name, value in inputs.items():
        if value is None or not value.is_floating_point():
            cast[name] = value
        else:
            cast[name] = value.to(activation_dtype if name in ACTIVATION_INPUTS else parameter_dtype)
    return cast


def run(op, inputs, grad_dtype, frozen=()):
    """Forward and backward of `op`; returns (y, {input name: gradient}) for every float input but h_mask.

    The output gradient holds the same values for every run of a case: random numbers rounded to grad_dtype.
    """
    leaves = {name: value.detach().clone().requires_grad_(name not in frozen)
              for name, value in inputs.items()
              if value is not None and value.is_floating_point() and name != "h_mask"}
    routing = leaves.get("router_weights", inputs.get("expert_ids"))
    y = op(leaves["x"], leaves["norm_weight"], EPS, leaves["down_weight"], leaves["down_bias"], leaves["up_weight"],
           leaves["up_bias"], routing, SCALE, inputs["h_mask"])
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(grad_dtype).to(y.dtype)
    y.backward(grad_y)
    return y.detach(), {name: leaf.grad for name, leaf in leaves.items() if leaf.requires_grad}


def expected_grad_dtype(name, dtype):
    return dtype if name in ACTIVATION_INPUTS else torch.float32


def three_ways(routing, inputs, dtype, frozen=()):
    fast_op, plain_op, exact_op = ROUTINGS[routing]
    in_dtype = cast_inputs(inputs, dtype)
    exact = run(exact_op, cast_inputs(in_dtype, torch.float64, torch.float64), dtype, frozen=frozen)
    return run(fast_op, in_dtype, dtype, frozen=frozen), run(plain_op, in_dtype, dtype, frozen=frozen), exact


@pytest.mark.parametrize("with_mask", [True, False], ids=["mask", "no_mask"])
@pytest.mark.parametrize("routing", list(ROUTINGS))
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_every_gradient(shape, dtype_name, routing, with_mask):
    dtype = DTYPES[dtype_name]
    inputs = make_inputs(*shape, routing=routing, with_mask=with_mask)
    (fast, fast_grads), (plain, plain_grads), (exact, exact_grads) = three_ways(routing, inputs, dtype)
    assert fast.dtype == dtype and fast.shape == exact.shape
    assert_close_to_reference(fast, plain, exact, what="y")
    expected_names = {"x", "norm_weight", "down_weight", "down_bias", "up_weight", "up_bias"}
    expected_names |= {"router_weights"} if routing == "per_sample" else set()
    assert set(fast_grads) == set(exact_grads) == expected_names
    for name, exact_grad in exact_grads.items():
        assert fast_grads[name].dtype == expected_grad_dtype(name, dtype), name
        assert exact_grad.abs().max() > 0, name
        assert_close_to_reference(fast_grads[name], plain_grads[name], exact_grad, what=f"grad {name}")


@pytest.mark.parametrize("routing", list(ROUTINGS))
def test_float64_matches_reference_tightly(routing):
    inputs = cast_inputs(make_inputs(3, 13, 200, 8, 2, 4, routing=routing, with_mask=True), torch.float64,
                         torch.float64)
    fast_op, _, exact_op = ROUTINGS[routing]
    (fast, fast_grads), (exact, exact_grads) = run(fast_op, inputs, torch.float64), run(exact_op, inputs, torch.float64)
    torch.testing.assert_close(fast, exact, rtol=1e-12, atol=1e-12)
    for name, exact_grad in exact_grads.items():
        torch.testing.assert_close(fast_grads[name], exact_grad, rtol=1e-10, atol=1e-11, msg=name)


@pytest.mark.parametrize("frozen", [("norm_weight",), ("norm_weight", "x"), ("down_weight", "down_bias"),
                                    ("up_weight", "up_bias", "router_weights")], ids="+".join)
def test_frozen_inputs_get_no_gradient_and_the_rest_stay_exact(frozen):
    inputs = make_inputs(2, 9, 96, 8, 2, 2, routing="per_sample", with_mask=True)
    (fast, fast_grads), (plain, plain_grads), (exact, exact_grads) = three_ways("per_sample", inputs, torch.float32,
                                                                                frozen=frozen)
    assert set(fast_grads) == set(exact_grads) and not set(frozen) & set(fast_grads)
    for name, exact_grad in exact_grads.items():
        assert_close_to_reference(fast_grads[name], plain_grads[name], exact_grad, what=f"grad {name}")


def test_backward_is_bitwise_reproducible():
    inputs = make_inputs(4, 37, 256, 16, 2, 2, routing="per_sample", with_mask=True)
    first, second = (run(cpp_backend.cpp_rms_norm_adapter, inputs, torch.float32) for _ in range(2))
    assert torch.equal(first[0], second[0])
    for name, grad in first[1].items():
        assert torch.equal(grad, second[1][name]), name


def test_modality_pass_shape_single_token_rows():
    """The router's modality pass runs the op on [num_modalities, 1, D]."""
    inputs = make_inputs(2, 1, 64, 8, 2, 2, routing="per_sample", with_mask=False)
    (fast, fast_grads), (plain, plain_grads), (exact, exact_grads) = three_ways("per_sample", inputs, torch.float32)
    assert_close_to_reference(fast, plain, exact, what="y")
    for name, exact_grad in exact_grads.items():
        assert_close_to_reference(fast_grads[name], plain_grads[name], exact_grad, what=f"grad {name}")


@pytest.mark.parametrize("routing", list(ROUTINGS))
def test_cpu_autocast_leaves_the_kernel_precision_alone(routing):
    inputs = make_inputs(2, 9, 96, 8, 2, 2, routing=routing, with_mask=True)
    fast_op = ROUTINGS[routing][0]
    expected, expected_grads = run(fast_op, inputs, torch.float32)
    leaves = {name: value.clone().requires_grad_() for name, value in inputs.items()
              if value is not None and value.is_floating_point() and name != "h_mask"}
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        y = fast_op(leaves["x"], leaves["norm_weight"], EPS, leaves["down_weight"], leaves["down_bias"],
                    leaves["up_weight"], leaves["up_bias"], leaves.get("router_weights", inputs.get("expert_ids")),
                    SCALE, inputs["h_mask"])
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(7)))     # backward outside autocast
    assert y.dtype == torch.float32 and torch.equal(y, expected)
    for name, grad in expected_grads.items():
        assert torch.equal(leaves[name].grad, grad), name


def test_bad_inputs_raise_errors_that_name_the_fix():
    inputs = make_inputs(2, 5, 32, 4, 2, 2, routing="per_token", with_mask=False)
    args = lambda x, ids: (x, inputs["norm_weight"], EPS, inputs["down_weight"], inputs["down_bias"],  # noqa: E731
                           inputs["up_weight"], inputs["up_bias"], ids, SCALE, None)
    with pytest.raises(RuntimeError, match="supported are float32, bfloat16, float16 and float64"):
        cpp_backend.cpp_rms_norm_adapter_by_expert(*args(inputs["x"].int(), inputs["expert_ids"]))
    with pytest.raises(RuntimeError, match=r"expert ids must lie in \[0, experts\)"):
        cpp_backend.cpp_rms_norm_adapter_by_expert(*args(inputs["x"], inputs["expert_ids"] + 2))
    with pytest.raises(ValueError, match="x of shape \\[batch, length, hidden\\]"):
        cpp_backend.cpp_rms_norm_adapter_by_expert(*args(inputs["x"][0], inputs["expert_ids"][0]))
    with pytest.raises(ValueError, match="router_weights must have shape"):
        cpp_backend.cpp_rms_norm_adapter(*args(inputs["x"], torch.ones(3, 2) / 2))


def test_patched_llama_matches_reference_backend(monkeypatch):
    model = fastmma.patch(tiny_causal_lm("llama", vocab_size=100), fastmma.MMAConfig(targets=("attn", "ffn")))
    randomize_adapters(model)
    model.train()
    ids = torch.randint(3, 100, (3, 10), generator=torch.Generator().manual_seed(0))
    modality = torch.tensor([0, 1, 1])
    assert_backend_matches_reference(monkeypatch, model, ids, modality, "cpp")
