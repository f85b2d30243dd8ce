"""A tiny patched Llama run with the Triton backend (CPU interpreter) against the reference backend."""
import torch

import fastmma
from fastmma.ops import triton_backend  # noqa: F401  (registers the "triton" backend)

from ..helpers import randomize_adapters, relative_error, tiny_causal_lm
from .inputs import logits_and_adapter_grads


def test_patched_llama_matches_reference_backend(monkeypatch):
    model = fastmma.patch(tiny_causal_lm("llama"), fastmma.MMAConfig(targets=("attn", "ffn"), dropout=0.1))
    randomize_adapters(model)
    model.train()
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    modality = torch.tensor([0, 1])
    results = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("FASTMMA_BACKEND", backend)
        results[backend] = logits_and_adapter_grads(model, ids, modality)
    (ref_logits, ref_grads), (fast_logits, fast_grads) = results["reference"], results["triton"]
    assert relative_error(fast_logits, ref_logits) <= 1e-5
    assert set(fast_grads) == set(ref_grads)
    assert len(ref_grads) == 4 * 6 + 1                       # 4 adapters x (A, a, U, c, W_r, b_r) + MOD embedding
    for name, ref_grad in ref_grads.items():
        assert ref_grad.abs().max() > 0, name
        assert relative_error(fast_grads[name], ref_grad) <= 1e-4, name


def test_cached_generation_with_triton(monkeypatch):
    """Decoding runs the small-M kernels; cached and uncached greedy generation must agree."""
    monkeypatch.setenv("FASTMMA_BACKEND", "triton")
    model = fastmma.patch(tiny_causal_lm("llama"), fastmma.MMAConfig(targets=("attn", "ffn")))
    randomize_adapters(model)
    ids = torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(1))
    kwargs = dict(modality=torch.tensor([1, 0]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
        monkeypatch.setenv("FASTMMA_BACKEND", "reference")
        expected = model.generate(ids, use_cache=True, **kwargs)
    assert torch.equal(cached, uncached) and torch.equal(cached, expected)
