"""fastmma's CPU causal attention (fastmma/ops/cpp_causal_attention.py over csrc/causal_attention.cpp: blocked
forward and backward, the backward without the attention output) against the written-out fp64 oracle
(fastmma.reference.causal_attention_reference), forward and the three gradients, in fp32/bf16/fp16, on odd
lengths (a partial last block, one query row, several blocks) and grouped-query heads, through the BLAS GEMM
and through the ATen fallback. The error must stay within 2x plain PyTorch's (the same oracle run in the same
dtype) + a small floor.
"""
from __future__ import annotations

import pytest
import torch

from fastmma.ops import cpp_backend, cpp_causal_attention
from fastmma.reference import causal_attention_reference

from ..helpers import assert_close_to_reference, assert_same_bits_with_one_and_two_threads

pytestmark = [pytest.mark.skipif(not cpp_backend.is_available(),
                                 reason="fastmma's C++ extension is not built (pip install --no-build-isolation -e .)")]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (batch, query heads, key/value heads, length, head dim): blocks of 96 / (heads per key/value head) positions,
# 16 to 64: 64 for one (130 = 2 blocks + 2 rows), 32 for three (97 = 3 blocks + 1), 16 for 16 (45 = 2 blocks + 13)
SHAPES = [(2, 6, 2, 37, 16), (1, 4, 4, 130, 8), (3, 3, 1, 1, 5), (1, 2, 1, 64, 24), (2, 9, 3, 97, 64),
          (1, 16, 1, 45, 8)]


def _inputs(shape, seed):
    batch, heads, kv_heads, length, head_dim = shape
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, length, heads, head_dim, dtype=torch.float64, generator=generator).transpose(1, 2)
    key = torch.randn(batch, kv_heads, length, head_dim, dtype=torch.float64, generator=generator)
    value = torch.randn(batch, kv_heads, length, head_dim, dtype=torch.float64, generator=generator)
    grad_out = torch.randn(batch, length, heads, head_dim, dtype=torch.float64, generator=generator)
    return query, key, value, grad_out


def _run(fn, inputs, dtype):
    query, key, value, grad_out = inputs
    leaves = [t.detach().to(dtype).requires_grad_() for t in (query, key, value)]
    scale = query.shape[-1] ** -0.5
    out = fn(*leaves, scale)
    out.backward(grad_out.to(dtype))
    return (out.detach(), *(leaf.grad for leaf in leaves))


def _fast(query, key, value, scale):
    return cpp_causal_attention.causal_attention(query, key, value, scale)[0]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_matches_fp64_within_plain_pytorch_error(shape, dtype):
    inputs = _inputs(shape, seed=sum(shape))
    exact = _run(causal_attention_reference, inputs, torch.float64)
    plain = _run(causal_attention_reference, inputs, dtype)
    fast = _run(_fast, inputs, dtype)
    for name, f, p, e in zip(("out", "grad_query", "grad_key", "grad_value"), fast, plain, exact):
        assert f.dtype == dtype and f.shape == e.shape, name
        assert_close_to_reference(f, p, e, what=f"{name} {dtype} {shape}")


def test_keeps_q_k_v_and_the_logsumexp_but_not_the_output():
    query, key, value, _ = (t.float() for t in _inputs((2, 4, 2, 40, 8), seed=1))
    leaves = [t.detach().requires_grad_() for t in (query, key, value)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out, lse = cpp_causal_attention.causal_attention(*leaves, 0.3)
    assert [tuple(t.shape) for t in saved] == [(2, 4, 40, 8), (2, 2, 40, 8), (2, 2, 40, 8), (2, 4, 40)]
    assert not any(t.untyped_storage().data_ptr() == out.untyped_storage().data_ptr() for t in saved)
    assert lse.shape == (2, 4, 40) and lse.dtype == torch.float32 and not lse.requires_grad


def test_a_replay_with_the_kept_logsumexp_gives_the_same_gradients_without_a_forward():
    query, key, value, grad_out = (t.float() for t in _inputs((2, 6, 3, 70, 16), seed=2))

    def grads(kept_lse):
        leaves = [t.detach().requires_grad_() for t in (query, key, value)]
        out, lse = cpp_causal_attention.causal_attention(*leaves, 0.25, kept_lse)
        out.backward(grad_out.float())
        return lse, [leaf.grad for leaf in leaves]

    lse, expected = grads(None)
    calls = []
    original = cpp_causal_attention.forward_with_lse
    cpp_causal_attention.forward_with_lse = lambda *args: calls.append(args) or original(*args)
    try:
        _, replayed = grads(lse)
    finally:
        cpp_causal_attention.forward_with_lse = original
    assert calls == []
    for got, want in zip(replayed, expected):
        assert torch.equal(got, want)


def test_the_same_bits_for_one_and_two_threads():
    inputs = tuple(t.float() for t in _inputs((2, 6, 2, 100, 32), seed=3))
    assert_same_bits_with_one_and_two_threads(lambda: _run(_fast, inputs, torch.float32))


def test_applies_only_to_what_it_computes():
    query, key, value = (torch.randn(1, 4, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16))
    assert cpp_causal_attention.applies(query, key, value)
    assert not cpp_causal_attention.applies(query.double(), key.double(), value.double())
    assert not cpp_causal_attention.applies(query, key[:, :, :5], value[:, :, :5])         # a KV cache: more keys
    assert not cpp_causal_attention.applies(query[:, :3], key, value)                      # 3 heads over 2
    assert not cpp_causal_attention.applies(query, key.bfloat16(), value)


@pytest.fixture
def aten_gemm():
    cpp_backend._C.force_aten_gemm(True)
    try:
        assert cpp_backend._C.attention_gemm_backend() == "aten"
        yield
    finally:
        cpp_backend._C.force_aten_gemm(False)


@pytest.mark.parametrize("shape", [(2, 6, 2, 37, 16), (1, 16, 1, 45, 8)], ids=str)
def test_the_aten_gemm_fallback_matches_fp64_too(shape, aten_gemm):
    inputs = _inputs(shape, seed=7)
    exact = _run(causal_attention_reference, inputs, torch.float64)
    plain = _run(causal_attention_reference, inputs, torch.float32)
    fast = _run(_fast, inputs, torch.float32)
    for name, f, p, e in zip(("out", "grad_query", "grad_key", "grad_value"), fast, plain, exact):
        assert_close_to_reference(f, p, e, what=f"{name} aten gemm {shape}")


def test_the_fallback_under_bf16_autocast_still_computes_in_float32(aten_gemm):
    inputs = tuple(t.float() for t in _inputs((1, 4, 2, 50, 16), seed=8))
    expected = _run(_fast, inputs, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _run(_fast, inputs, torch.float32)
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32 and torch.equal(g, e)


def test_gradients_of_any_layout():
    query, key, value, grad_out = (t.float() for t in _inputs((2, 6, 3, 33, 8), seed=9))
    expected = _run(_fast, (query, key, value, grad_out), torch.float32)
    spread_value = torch.stack([value, torch.full_like(value, float("nan"))], dim=-1)[..., 0]     # d-stride 2
    strided = (query.contiguous(), key.transpose(1, 2).contiguous().transpose(1, 2),                # rows KV*d apart
               spread_value, grad_out.transpose(1, 2).contiguous().transpose(1, 2))
    assert strided[1].stride(2) == 3 * 8 and strided[2].stride(3) == 2 and not strided[3].is_contiguous()
    got = _run(_fast, strided, torch.float32)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    one_key = key[:, :, :1].expand(key.shape)                                   # every row the same: stride 0
    broadcast = _run(_fast, (query, one_key, value, grad_out), torch.float32)
    copied = _run(_fast, (query, one_key.contiguous(), value, grad_out), torch.float32)
    for g, e in zip(broadcast, copied):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)


def test_inference_forward_matches_the_training_forward():
    query, key, value, _ = (t.float() for t in _inputs((2, 6, 2, 37, 16), seed=10))
    with torch.no_grad():
        out, lse = cpp_causal_attention.causal_attention(query, key, value, 0.25)
    assert lse is None
    assert torch.equal(out, cpp_causal_attention.forward_with_lse(query, key, value, 0.25)[0])


@pytest.mark.parametrize("call,message", [
    (lambda C: C.causal_attention_forward(torch.zeros(1, 4, 5, 8, dtype=torch.float64),
                                          *[torch.zeros(1, 2, 5, 8, dtype=torch.float64)] * 2, 1.0), "dtype"),
    (lambda C: C.causal_attention_forward(torch.zeros(1, 3, 5, 8), *[torch.zeros(1, 2, 5, 8)] * 2, 1.0),
     "multiple of KV"),
    (lambda C: C.causal_attention_forward(torch.zeros(1, 4, 5, 8), *[torch.zeros(1, 2, 6, 8)] * 2, 1.0),
     "as many keys as queries"),
    (lambda C: C.causal_attention_forward(torch.zeros(4, 5, 8), *[torch.zeros(1, 2, 5, 8)] * 2, 1.0), "4-D"),
    (lambda C: C.causal_attention_backward(torch.zeros(1, 4, 5, 8), torch.zeros(1, 4, 5, 8),
                                           *[torch.zeros(1, 2, 5, 8)] * 2, torch.zeros(1, 4, 5), 1.0),
     "grad_out must be"),
    (lambda C: C.causal_attention_backward(torch.zeros(1, 5, 4, 8), torch.zeros(1, 4, 5, 8),
                                           *[torch.zeros(1, 2, 5, 8)] * 2, torch.zeros(1, 4, 4), 1.0),
     "lse must be"),
])
def test_bad_inputs_name_the_problem(call, message):
    with pytest.raises(RuntimeError, match=message):
        call(cpp_backend._C)
