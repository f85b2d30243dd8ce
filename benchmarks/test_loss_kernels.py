"""CPU benchmark of the LM head + next-token loss, forward + backward to the hidden states, at SmolLM2-135M's
shape (hidden 576, vocabulary 49,152) for B=4, L=256 (1,024 tokens, 1,020 scored).

    python -m pytest benchmarks/test_loss_kernels.py --benchmark-only --benchmark-json=loss.json

Each group is one dtype and holds:
  chunked_cpp     fastmma's chunked loss with the in-place C++ cross-entropy (chunks of an eighth of the tokens);
  chunked_torch   the same chunked loss with torch ops for the softmax (chunks of a tenth; what runs off CPU);
  full_logits     the head on every token and F.cross_entropy on fp32 logits (Hugging Face's loss).
fp32 runs the fp32 model; bf16 runs it under bf16 autocast (both GEMMs in bf16, the softmax in fp32).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from fastmma.memory import chunked_loss
from fastmma.ops import cpp_backend

TOKENS, HIDDEN, VOCAB = (4, 256), 576, 49152
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
IMPLS = ("chunked_cpp", "chunked_torch", "full_logits")


def full_logits_loss(hidden, head, labels):
    logits = (hidden @ head.t()).float()                                         # [B, L, V]
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))


def make_step(impl, autocast_dtype, monkeypatch):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(*TOKENS, HIDDEN, generator=generator).requires_grad_()
    head = torch.randn(VOCAB, HIDDEN, generator=generator) * 0.02
    labels = torch.randint(0, VOCAB, TOKENS, generator=generator)
    if impl == "chunked_torch":
        monkeypatch.setattr(chunked_loss.cpp_cross_entropy, "applies", lambda device, dtype: False)
    loss_fn = full_logits_loss if impl == "full_logits" else chunked_loss.chunked_linear_cross_entropy

    def step():
        hidden.grad = None
        with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            loss = loss_fn(hidden, head, labels)
        loss.backward()

    return step


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_head_and_loss_forward_backward(benchmark, dtype_name, impl, monkeypatch):
    if impl == "chunked_cpp" and not cpp_backend.is_available():
        pytest.skip("fastmma's C++ extension is not built (reinstall with `pip install --no-build-isolation -e .`)")
    step = make_step(impl, DTYPES[dtype_name], monkeypatch)
    benchmark.group = f"head-loss-1024x576x49152-{dtype_name}"
    benchmark.extra_info.update(impl=impl, dtype=dtype_name, threads=torch.get_num_threads(),
                                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""))
    benchmark.pedantic(step, rounds=12, warmup_rounds=2)
