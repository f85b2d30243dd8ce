"""A tiny patched Llama run with the Triton backend (CPU interpreter, or a GPU with FASTMMA_TEST_DEVICE=cuda) against
the reference backend."""
import torch

import fastmma
from fastmma.ops import triton_backend  # noqa: F401  (registers the "triton" backend)

from ..helpers import TEST_DEVICE, randomize_adapters, tiny_causal_lm
from .inputs import assert_backend_matches_reference


def test_patched_llama_matches_reference_backend(monkeypatch):
    model = fastmma.patch(tiny_causal_lm("llama"), fastmma.MMAConfig(targets=("attn", "ffn"), dropout=0.1))
    randomize_adapters(model)
    model.to(TEST_DEVICE).train()
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(0)).to(TEST_DEVICE)
    modality = torch.tensor([0, 1], device=TEST_DEVICE)
    assert_backend_matches_reference(monkeypatch, model, ids, modality, "triton")


def test_cached_generation_with_triton(monkeypatch):
    """Decoding runs the small-M kernels; cached and uncached greedy generation must agree."""
    monkeypatch.setenv("FASTMMA_BACKEND", "triton")
    model = fastmma.patch(tiny_causal_lm("llama"), fastmma.MMAConfig(targets=("attn", "ffn")))
    randomize_adapters(model)
    model.to(TEST_DEVICE)
    ids = torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(1)).to(TEST_DEVICE)
    kwargs = dict(modality=torch.tensor([1, 0], device=TEST_DEVICE), max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
        monkeypatch.setenv("FASTMMA_BACKEND", "reference")
        expected = model.generate(ids, use_cache=True, **kwargs)
    assert torch.equal(cached, uncached) and torch.equal(cached, expected)
