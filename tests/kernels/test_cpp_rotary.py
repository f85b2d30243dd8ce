"""fastmma's CPU rotary embedding (fastmma/ops/cpp_rotary.py, csrc/rotary.cpp) against the written-out fp64
oracle (fastmma.reference.rotary_reference), forward and the input gradient, in fp32/bf16/fp16, for shared
(batch 1) and per-row position tables, odd head counts and lengths, head sizes that are not a multiple of the
SIMD width. The error must stay within 2x plain PyTorch's (the same oracle run in the same dtype) + a floor.
"""
from __future__ import annotations

import pytest
import torch

from fastmma.ops import cpp_backend, cpp_rotary
from fastmma.reference import rotary_reference

from ..helpers import assert_close_to_reference, assert_same_bits_with_one_and_two_threads

pytestmark = [pytest.mark.skipif(not cpp_backend.is_available(),
                                 reason="fastmma's C++ extension is not built (pip install --no-build-isolation -e .)")]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (batch, length, heads, head dim, batch of the position tables)
SHAPES = [(2, 37, 9, 64, 1), (3, 5, 3, 64, 3), (1, 1, 5, 6, 1), (2, 19, 2, 80, 2), (1, 70, 4, 34, 1)]


def _inputs(shape, seed):
    batch, length, heads, head_dim, table_batch = shape
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(batch, length, heads, head_dim, dtype=torch.float64, generator=generator)
    angles = torch.rand(table_batch, length, head_dim // 2, dtype=torch.float64, generator=generator) * 50
    angles = torch.cat([angles, angles], dim=-1)                        # LLaMA's tables repeat each frequency
    grad_out = torch.randn(batch, heads, length, head_dim, dtype=torch.float64, generator=generator)
    return rows, angles.cos(), angles.sin(), grad_out


def _run(fn, inputs, dtype):
    rows, cos, sin, grad_out = inputs
    leaf = rows.detach().to(dtype).requires_grad_()
    out = fn(leaf, cos.to(dtype), sin.to(dtype))                        # [B, heads, L, d]
    out.backward(grad_out.to(dtype))
    return out.detach(), leaf.grad


def _fast(rows, cos, sin):
    assert cpp_rotary.applies(rows, cos, sin)
    return cpp_rotary.cpp_rotary(rows, cos, sin).transpose(1, 2)


def _oracle(rows, cos, sin):
    return rotary_reference(rows.transpose(1, 2), cos, sin)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_matches_fp64_within_plain_pytorch_error(shape, dtype):
    inputs = _inputs(shape, seed=sum(shape))
    exact = _run(_oracle, inputs, torch.float64)
    plain = _run(_oracle, inputs, dtype)
    fast = _run(_fast, inputs, dtype)
    for name, f, p, e in zip(("out", "grad_rows"), fast, plain, exact):
        assert f.dtype == dtype and f.shape == e.shape, name
        assert_close_to_reference(f, p, e, what=f"{name} {dtype} {shape}")


def test_matches_transformers_apply_rotary_pos_emb():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rows, cos, sin, _ = (t.float() for t in _inputs((2, 33, 6, 32, 1), seed=4))
    keys = torch.randn(2, 33, 2, 32)
    want_q, want_k = apply_rotary_pos_emb(rows.transpose(1, 2), keys.transpose(1, 2), cos, sin)
    torch.testing.assert_close(cpp_rotary.cpp_rotary(rows, cos, sin).transpose(1, 2), want_q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cpp_rotary.cpp_rotary(keys, cos, sin).transpose(1, 2), want_k, rtol=1e-6, atol=1e-6)


def test_keeps_only_the_position_tables():
    rows, cos, sin, _ = (t.float() for t in _inputs((2, 12, 3, 16, 1), seed=5))
    leaf = rows.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        cpp_rotary.cpp_rotary(leaf, cos, sin)
    assert [t is cos or t is sin for t in saved] == [True, True]


def test_the_same_bits_for_one_and_two_threads():
    inputs = tuple(t.float() for t in _inputs((3, 50, 5, 64, 3), seed=6))
    assert_same_bits_with_one_and_two_threads(lambda: _run(_fast, inputs, torch.float32))


def test_applies_only_to_what_it_computes():
    rows, cos, sin = torch.randn(2, 8, 3, 16), torch.randn(1, 8, 16), torch.randn(1, 8, 16)
    assert cpp_rotary.applies(rows, cos, sin)
    assert cpp_rotary.applies(rows, cos.expand(2, 8, 16).contiguous(), sin.expand(2, 8, 16).contiguous())
    assert not cpp_rotary.applies(rows.double(), cos.double(), sin.double())
    assert not cpp_rotary.applies(rows.bfloat16(), cos, sin)                       # autocast: mixed dtypes
    assert not cpp_rotary.applies(rows.transpose(1, 2), cos, sin)                  # not [B, L, heads, d] rows
    assert not cpp_rotary.applies(rows[..., :15], cos[..., :15], sin[..., :15])    # an odd head size
    assert not cpp_rotary.applies(rows, cos[:, :5], sin[:, :5])


@pytest.mark.parametrize("call,message", [
    (lambda C: C.rotary_forward(torch.zeros(2, 4, 3, 8), torch.zeros(1, 4, 8), torch.zeros(1, 4, 8).double()),
     "share one dtype"),
    (lambda C: C.rotary_forward(torch.zeros(2, 4, 3, 7), torch.zeros(1, 4, 7), torch.zeros(1, 4, 7)), "must be even"),
    (lambda C: C.rotary_forward(torch.zeros(2, 4, 3, 8).transpose(1, 2), torch.zeros(1, 3, 8), torch.zeros(1, 3, 8)),
     "contiguous"),
    (lambda C: C.rotary_backward(torch.zeros(2, 4, 3, 8), torch.zeros(3, 4, 8), torch.zeros(3, 4, 8)),
     "cos and sin must be contiguous"),
])
def test_bad_inputs_name_the_problem(call, message):
    with pytest.raises(RuntimeError, match=message):
        call(cpp_backend._C)
