"""The Triton kernels (run by Triton's CPU interpreter, or on a GPU with FASTMMA_TEST_DEVICE=cuda) against the
fp64 LaVIN-layout oracle.

Each case runs the op three ways on the same random inputs: the fp64 reference (exact),
plain PyTorch in the case's dtype (plain) and Triton in that dtype (fast), forward and
every gradient. The fast error must stay within 2x the plain error (+ a tiny floor).
Every buffer the kernels write starts out as NaN, so an unwritten element fails, and the
backward grid is sized as on a GPU, so its per-chunk partial sums are exercised.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastmma import reference
from fastmma.kernels import buffers, norm_adapter_backward
from fastmma.ops import backend, norm_adapter, norm_adapter_linear
from fastmma.ops import triton_backend  # registers the "triton" backend

from ..helpers import TEST_DEVICE, assert_close_to_reference
from .inputs import make_inputs

REPO_ROOT = Path(__file__).resolve().parents[2]
EPS = 1e-5
SCALE = 0.7
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
OPS = {
    "per_sample": (norm_adapter.rms_norm_adapter, norm_adapter.torch_rms_norm_adapter,
                   reference.norm_adapter_reference),
    "per_token": (norm_adapter.rms_norm_adapter_by_expert, norm_adapter.torch_rms_norm_adapter_by_expert,
                  reference.norm_adapter_by_expert_reference),
    "linear": (norm_adapter_linear.rms_norm_adapter_linear, norm_adapter_linear.torch_rms_norm_adapter_linear,
               norm_adapter_linear.reference_rms_norm_adapter_linear),
}
ACTIVATION_INPUTS = ("x", "norm_weight", "h_mask", "proj_weight", "proj_bias")   # in the case's dtype; the rest fp32
FROZEN_PROJECTION = ("proj_weight", "proj_bias")


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    """Kernel output buffers start as NaN instead of whatever memory held."""
    def new_nan_buffer(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    monkeypatch.setattr(buffers, "new_buffer", new_nan_buffer)


@pytest.fixture(autouse=True)
def gpu_sized_grid(monkeypatch):
    """Size the backward grid as for a 132-SM GPU, so row chunks split segments as they would there."""
    monkeypatch.setattr(norm_adapter_backward, "target_programs", lambda device: 4 * 132)


@pytest.fixture
def triton_backend_on(monkeypatch):
    monkeypatch.setenv("FASTMMA_BACKEND", "triton")


def run(fn, inputs, dtype, frozen=FROZEN_PROJECTION):
    """Forward and backward of `fn` with inputs cast to `dtype`: (output, {name: gradient})."""
    leaves = {}
    for name, value in inputs.items():
        if value is None or not value.is_floating_point():
            leaves[name] = value if value is None else value.to(TEST_DEVICE)
            continue
        cast = dtype if name in ACTIVATION_INPUTS or dtype == torch.float64 else torch.float32
        leaves[name] = value.detach().clone().to(TEST_DEVICE, cast).requires_grad_(name not in frozen and name != "h_mask")
    routing = leaves["expert_ids"] if "expert_ids" in leaves else leaves["router_weights"]
    args = [leaves["x"], leaves["norm_weight"], EPS, leaves["down_weight"], leaves["down_bias"], leaves["up_weight"],
            leaves["up_bias"], routing, SCALE, leaves["h_mask"]]
    if "proj_weight" in leaves:
        args += [leaves["proj_weight"], leaves["proj_bias"]]
    out = fn(*args)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.device, out.dtype)
    out.backward(grad_out)
    grads = {name: leaf.grad for name, leaf in leaves.items()
             if isinstance(leaf, torch.Tensor) and leaf.requires_grad}
    return out.detach(), grads


def check_against_reference(op, inputs, dtype, frozen=FROZEN_PROJECTION):
    fast_fn, plain_fn, exact_fn = OPS[op]
    exact, exact_grads = run(exact_fn, inputs, torch.float64, frozen)
    plain, plain_grads = run(plain_fn, inputs, dtype, frozen)
    fast, fast_grads = run(fast_fn, inputs, dtype, frozen)
    assert fast.dtype == dtype and fast.shape == exact.shape
    assert torch.isfinite(fast).all()
    assert_close_to_reference(fast, plain, exact, what="output")
    assert set(fast_grads) == set(exact_grads) and fast_grads
    for name, exact_grad in exact_grads.items():
        assert fast_grads[name] is not None, name
        assert fast_grads[name].dtype == plain_grads[name].dtype, name
        assert torch.isfinite(fast_grads[name]).all(), name
        assert_close_to_reference(fast_grads[name], plain_grads[name], exact_grad, what=f"d{name}")


# (batch, length, hidden, rank, groups, experts): M = batch * length rows; D = 200 and 96 are not
# multiples of the 64/128-wide column blocks; M <= 16 takes the decode kernels.
@pytest.mark.parametrize("dtype, shape, with_mask", [
    ("fp32", (1, 37, 200, 8, 2, 2), True),
    ("fp16", (2, 19, 200, 4, 1, 1), True),
    ("bf16", (2, 21, 96, 16, 4, 4), True),
    ("fp32", (3, 13, 200, 32, 2, 2), False),
    ("fp32", (16, 1, 200, 8, 2, 2), True),      # decode, 16 rows
    ("bf16", (3, 1, 96, 4, 2, 4), False),       # decode
])
def test_per_sample_routing(triton_backend_on, dtype, shape, with_mask):
    check_against_reference("per_sample", make_inputs(*shape, with_mask=with_mask), DTYPES[dtype])


@pytest.mark.parametrize("dtype, shape", [
    ("fp32", (2, 19, 200, 8, 2, 4)),
    ("bf16", (3, 7, 96, 16, 4, 2)),
    ("fp16", (5, 1, 200, 32, 1, 4)),            # decode
])
def test_per_token_routing(triton_backend_on, dtype, shape):
    check_against_reference("per_token", make_inputs(*shape, routing="per_token"), DTYPES[dtype])


def test_per_token_routing_with_an_unused_expert(triton_backend_on):
    inputs = make_inputs(2, 19, 200, 8, 2, 4, routing="per_token")
    inputs["expert_ids"] = inputs["expert_ids"].clamp(max=2)                       # expert 3 gets no token
    check_against_reference("per_token", inputs, torch.float32)


@pytest.mark.parametrize("dtype, shape, out_features, trainable_projection", [
    ("fp32", (2, 19, 200, 8, 2, 2), 150, True),
    ("bf16", (2, 23, 96, 4, 2, 4), 200, False),
    ("fp16", (3, 1, 96, 16, 4, 1), 72, True),   # decode
])
def test_adapter_linear(triton_backend_on, dtype, shape, out_features, trainable_projection):
    inputs = make_inputs(*shape, out_features=out_features)
    frozen = () if trainable_projection else FROZEN_PROJECTION
    check_against_reference("linear", inputs, DTYPES[dtype], frozen)


def test_adapter_linear_without_bias(triton_backend_on):
    inputs = make_inputs(2, 11, 96, 8, 2, 2, out_features=40)
    inputs["proj_bias"] = None
    check_against_reference("linear", inputs, torch.bfloat16)


def test_frozen_input_and_norm_weight(triton_backend_on):
    """x and the norm weight frozen: the kernels skip their gradients; the adapter's still match."""
    check_against_reference("per_sample", make_inputs(2, 13, 200, 8, 2, 2), torch.float32,
                            frozen=("x", "norm_weight"))


def test_non_contiguous_inputs_are_copied(triton_backend_on):
    inputs = make_inputs(3, 13, 200, 8, 2, 2)
    strided = dict(inputs)
    strided["x"] = inputs["x"].transpose(0, 1).contiguous().transpose(0, 1)              # [B, L, D] view of [L, B, D]
    strided["h_mask"] = inputs["h_mask"].transpose(0, 1).contiguous().transpose(0, 1)
    strided["up_weight"] = inputs["up_weight"].transpose(1, 2).contiguous().transpose(1, 2)
    strided["down_weight"] = inputs["down_weight"].t().contiguous().t()
    fast_fn = OPS["per_sample"][0]

    def fast_fn_on_strided(*args):
        assert not any(args[i].is_contiguous() for i in (0, 3, 5, 9))        # x, down_weight, up_weight, h_mask
        return fast_fn(*args)

    expected, expected_grads = run(fast_fn, inputs, torch.float32)
    got, got_grads = run(fast_fn_on_strided, strided, torch.float32)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    for name in expected_grads:
        torch.testing.assert_close(got_grads[name], expected_grads[name], rtol=0, atol=0)


def test_dispatch_picks_triton_only_when_asked_on_cpu(monkeypatch):
    monkeypatch.setenv("FASTMMA_BACKEND", "triton")
    assert backend.resolve(norm_adapter.OP_PER_SAMPLE, "cpu")[0] == "triton"
    assert backend.resolve(norm_adapter_linear.OP_LINEAR, "cpu")[0] == "triton"
    monkeypatch.setenv("FASTMMA_BACKEND", "auto")
    assert backend.resolve(norm_adapter.OP_PER_SAMPLE, "cpu")[0] != "triton"


def op_args(inputs, **changes):
    """Positional arguments of rms_norm_adapter built from `inputs`, some of them replaced."""
    values = {name: value.to(TEST_DEVICE) if isinstance(value, torch.Tensor) else value
              for name, value in {**inputs, **changes}.items()}
    return [values["x"], values["norm_weight"], EPS, values["down_weight"], values["down_bias"], values["up_weight"],
            values["up_bias"], values["router_weights"], SCALE, values["h_mask"]]


def test_bad_inputs_raise_clear_errors(triton_backend_on, monkeypatch):
    inputs = make_inputs(2, 5, 64, 8, 2, 2)
    with pytest.raises(ValueError, match="router_weights must have shape"):
        norm_adapter.rms_norm_adapter(*op_args(inputs, router_weights=torch.rand(3, 2)))
    with pytest.raises(ValueError, match="down_weight must have shape"):
        norm_adapter.rms_norm_adapter(*op_args(inputs, down_weight=torch.rand(8, 63)))
    with pytest.raises(ValueError, match="x must be"):
        norm_adapter.rms_norm_adapter(*op_args(inputs, x=inputs["x"].double()))
    out_of_range_ids = torch.full((2, 5), 2)
    with pytest.raises(ValueError, match="expert_ids must lie in"):
        norm_adapter.rms_norm_adapter_by_expert(*op_args(inputs, router_weights=out_of_range_ids))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cpu_args = [value.cpu() if isinstance(value, torch.Tensor) else value for value in op_args(inputs)]
    with pytest.raises(RuntimeError, match="runs CUDA tensors"):
        triton_backend.triton_rms_norm_adapter(*cpu_args)


def test_registers_nothing_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "from fastmma.ops import backend, triton_backend\n"
            "assert not any(name == 'triton' for _, name in backend._IMPLEMENTATIONS), backend._IMPLEMENTATIONS\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO_ROOT)
