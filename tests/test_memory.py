"""Memory savers: chunked LM head + loss, recomputing SwiGLU; exactness and what they keep."""
import copy

import pytest
import torch
import torch.nn.functional as F

import fastmma
from fastmma.memory import chunked_linear_cross_entropy, swiglu
from fastmma.memory.chunked_loss import default_chunk_tokens
from fastmma.memory.live_logits import LiveVocabSized
from fastmma.memory.measure import peak_bytes_during
from fastmma.ops import cpp_backend

from .helpers import randomize_adapters, tiny_causal_lm


def saved_bytes(fn):
    """Bytes autograd keeps for backward while `fn` runs, each storage counted once."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def test_chunked_loss_matches_full_logits():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 11, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    head = torch.randn(50, 16, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 50, (3, 11), generator=generator)
    labels[0, :4] = -100
    labels[1, :] = -100                          # a sample with no scored token
    labels[2, :8] = -100                         # answers only, as LaVIN scores them
    expected = F.cross_entropy((hidden @ head.t())[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1),
                               ignore_index=-100)
    (expected_grad,) = torch.autograd.grad(expected, hidden)
    for chunk in (1, 5, 64):
        loss = chunked_linear_cross_entropy(hidden, head, labels, chunk_tokens=chunk)
        (grad,) = torch.autograd.grad(loss * 3.0, hidden)
        torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grad, 3.0 * expected_grad, rtol=1e-10, atol=1e-12)


def test_chunked_loss_under_bf16_autocast_is_as_close_to_fp64_as_plain_autocast():
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 37, 24, generator=generator, dtype=torch.float64)
    head = torch.randn(301, 24, generator=generator, dtype=torch.float64) * 0.3
    labels = torch.randint(0, 301, (2, 37), generator=generator)
    labels[1, :9] = -100

    def full_logits_loss(h, w):
        return F.cross_entropy((h @ w.t()).float()[:, :-1].reshape(-1, 301), labels[:, 1:].reshape(-1))

    def loss_and_grad(loss_fn, dtype, autocast):
        h = hidden.to(dtype).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(h, head.to(dtype))
        (grad,) = torch.autograd.grad(loss, h)
        assert grad.dtype == dtype
        return loss.double(), grad.double()

    want_loss, want_grad = loss_and_grad(full_logits_loss, torch.float64, False)
    plain_loss, plain_grad = loss_and_grad(full_logits_loss, torch.float32, True)
    for chunk in (5, None):
        got_loss, got_grad = loss_and_grad(lambda h, w: chunked_linear_cross_entropy(h, w, labels, chunk_tokens=chunk),
                                           torch.float32, True)
        assert (got_loss - want_loss).abs() <= 2 * (plain_loss - want_loss).abs() + 1e-6
        assert (got_grad - want_grad).abs().max() <= 2 * (plain_grad - want_grad).abs().max() + 1e-6
        assert (plain_grad - want_grad).abs().max() > 1e-5             # bf16 GEMMs really ran


def test_chunked_loss_with_no_scored_token_is_zero():
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    loss = chunked_linear_cross_entropy(hidden, torch.randn(20, 8), torch.full((2, 5), -100))
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad.abs().max().item() == 0.0


def test_chunked_loss_keeps_an_eighth_of_the_logits():
    hidden = torch.randn(4, 64, 32, requires_grad=True)
    head = torch.randn(1000, 32)
    labels = torch.randint(0, 1000, (4, 64))
    _, kept = saved_bytes(lambda: chunked_linear_cross_entropy(hidden, head, labels))
    full_logits = 4 * 64 * 1000 * 4
    assert kept <= hidden.numel() * 4 + 1024 and kept <= full_logits / 8


def test_default_chunks_stay_under_an_eighth_of_the_logits_and_are_not_tiny():
    assert default_chunk_tokens(1024, torch.float32) == 96             # a tenth in 16-row blocks: fp32 logits
    assert default_chunk_tokens(520, torch.float32) == 48
    assert default_chunk_tokens(1024, torch.bfloat16) == 64            # a sixteenth: a bf16 copy exists briefly
    assert default_chunk_tokens(512, torch.bfloat16) == 32
    assert default_chunk_tokens(7, torch.float32) == 7                 # a small batch is one chunk, not 7 GEMVs
    assert default_chunk_tokens(100, torch.bfloat16) == 16
    assert default_chunk_tokens(10 ** 6, torch.float32) == 1024
    assert default_chunk_tokens(1024, torch.float32, in_place=True) == 128     # the C++ kernel: an eighth
    assert default_chunk_tokens(1020, torch.float32, in_place=True) == 112     # never above an eighth
    assert default_chunk_tokens(512, torch.bfloat16, in_place=True) == 64


def _logits_and_whole_peak(hidden, head, labels):
    """(most logits bytes alive at once, whole allocation peak) of one chunked loss forward + backward."""
    tracker = LiveVocabSized(head.shape[0], head.shape[1], exclude=[head])
    with tracker:
        _, peak = peak_bytes_during(lambda: chunked_linear_cross_entropy(hidden[None], head, labels).backward())
    return tracker.peak_bytes, peak


@pytest.mark.parametrize("backend_name", ["auto", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_loss_keeps_at_most_an_eighth_of_the_full_logits_alive(dtype, backend_name, monkeypatch):
    monkeypatch.setenv("FASTMMA_BACKEND", backend_name)
    tokens, vocab, dim = 1024, 4096, 16
    hidden = torch.randn(tokens, dim, dtype=dtype, requires_grad=True)
    head = torch.randn(vocab, dim, dtype=dtype)
    labels = torch.randint(0, vocab, (1, tokens))
    logits_peak, whole_peak = _logits_and_whole_peak(hidden, head, labels)
    full_fp32_logits = tokens * vocab * 4
    size = torch.finfo(dtype).bits // 8
    if backend_name == "auto" and cpp_backend.is_available():
        assert logits_peak == full_fp32_logits // 8 * size // 4           # one [V, 128] chunk in the head's dtype
    else:
        assert full_fp32_logits / 16 < logits_peak <= full_fp32_logits / 8
    # the rest: the kept gradient [tokens, D], one chunk's rows, row indices, and a packed copy of the head that
    # a bf16 GEMM may make
    assert logits_peak <= whole_peak <= logits_peak + 3 * tokens * dim * size + 32 * tokens + vocab * dim * 4


def test_live_logits_counts_the_full_logits_of_plain_pytorch_and_not_the_head():
    hidden = torch.randn(64, 8, requires_grad=True)
    head = torch.randn(300, 8)
    labels = torch.randint(0, 300, (64,))
    tracker = LiveVocabSized(300, 8, exclude=[head])
    with tracker:
        loss = F.cross_entropy(hidden @ head.t(), labels)           # logits and their log-softmax, both [64, 300]
        head_copy = head * 1.0                                       # weight-shaped: not logits
    loss.backward()
    assert tracker.peak_bytes == 2 * 64 * 300 * 4 and head_copy.shape == head.shape


@pytest.mark.parametrize("backend_name", ["auto", "torch"])
def test_chunked_loss_in_fp32_is_as_close_to_fp64_as_plain_pytorch(backend_name, monkeypatch):
    monkeypatch.setenv("FASTMMA_BACKEND", backend_name)
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 45, 24, generator=generator, dtype=torch.float64)
    head = torch.randn(1001, 24, generator=generator, dtype=torch.float64) * 0.5
    labels = torch.randint(0, 1001, (3, 45), generator=generator)
    labels[0, :10] = -100
    labels[2, 30:] = -100

    def full_logits_loss(h, w):
        return F.cross_entropy((h @ w.t())[:, :-1].reshape(-1, 1001), labels[:, 1:].reshape(-1))

    def loss_and_grad(loss_fn, dtype):
        h = hidden.to(dtype).requires_grad_()
        loss = loss_fn(h, head.to(dtype))
        (grad,) = torch.autograd.grad(loss * 2.0, h)
        return loss.double(), grad.double()

    want_loss, want_grad = loss_and_grad(full_logits_loss, torch.float64)
    plain_loss, plain_grad = loss_and_grad(full_logits_loss, torch.float32)
    for chunk in (7, 16, None):
        got_loss, got_grad = loss_and_grad(
            lambda h, w: chunked_linear_cross_entropy(h, w, labels, chunk_tokens=chunk), torch.float32)
        loss_ulp = torch.finfo(torch.float32).eps * want_loss.abs()          # the torch path sums chunks in fp32
        assert (got_loss - want_loss).abs() <= 2 * (plain_loss - want_loss).abs() + 2 * loss_ulp
        assert (got_grad - want_grad).abs().max() <= 2 * (plain_grad - want_grad).abs().max() + 1e-8
