"""The inference-only folded path (router folded into per-modality tables, one kernel call per norm).

Each backend's folded op is compared with the fp64 reference of the full op on fresh random
inputs, with the same tolerance rule as the training kernels: within 2x of plain PyTorch's
error in the same dtype. The patched model must take the folded path only where it is exact
to use (no autograd, no dropout, cached tables) and give the same logits as the full path.
"""
from __future__ import annotations

import pytest
import torch

import fastmma
from fastmma import reference
from fastmma.ops import backend, cpp_backend, norm_adapter

from ..helpers import randomize_adapters, relative_error, tiny_causal_lm
from .inputs import make_inputs

EPS = 1e-5
SCALE = 0.7
SHAPES = [(3, 13, 200, 8, 2, 2), (1, 1, 328, 32, 4, 2), (2, 1, 72, 4, 1, 4), (4, 5, 100, 16, 4, 1)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FOLDED = {"torch": norm_adapter.torch_rms_norm_adapter_folded}
if cpp_backend.is_available():
    FOLDED["cpp"] = cpp_backend.cpp_rms_norm_adapter_folded


def folded_and_ids(inputs, num_tables: int, seed: int):
    """A [num_tables, E] router table and per-sample table ids [B] drawn at random."""
    g = torch.Generator().manual_seed(seed)
    batch, experts = inputs["x"].shape[0], inputs["up_weight"].shape[0]
    router_table = torch.softmax(torch.randn(num_tables, experts, generator=g), -1)     # [T, E]
    table_ids = torch.randint(0, num_tables, (batch,), generator=g)                     # [B]
    return router_table, table_ids


def full_op(op, inputs, router_weights, dtype):
    x = inputs["x"].to(dtype)
    return op(x, inputs["norm_weight"].to(dtype), EPS, inputs["down_weight"], inputs["down_bias"],
              inputs["up_weight"], inputs["up_bias"], router_weights, SCALE, None)


@torch.no_grad()
@pytest.mark.parametrize("backend_name", list(FOLDED))
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_folded_op_matches_the_fp64_reference(shape, dtype_name, backend_name):
    dtype = DTYPES[dtype_name]
    inputs = make_inputs(*shape, with_mask=False, seed=sum(shape))
    router_table, table_ids = folded_and_ids(inputs, num_tables=3, seed=len(shape) + shape[0])
    router_weights = router_table[table_ids]                                            # [B, E]
    exact = reference.norm_adapter_reference(
        inputs["x"].double(), inputs["norm_weight"].to(dtype).double(), EPS, inputs["down_weight"].double(),
        inputs["down_bias"].double(), inputs["up_weight"].double(), inputs["up_bias"].double(),
        router_weights.double(), SCALE, None)
    plain = full_op(norm_adapter.torch_rms_norm_adapter, inputs, router_weights, dtype)
    folded = norm_adapter.fold_tables(inputs["norm_weight"].to(dtype), EPS, inputs["down_weight"], inputs["down_bias"],
                                      inputs["up_weight"], inputs["up_bias"], router_table, SCALE)
    fast = FOLDED[backend_name](inputs["x"].to(dtype), folded, table_ids)
    assert fast.dtype == dtype and fast.shape == inputs["x"].shape
    assert torch.isfinite(fast).all()
    plain_error = relative_error(plain, exact)
    assert relative_error(fast, exact) <= 2 * plain_error + 1e-6


def test_folded_op_refuses_autograd_inputs():
    if "cpp" not in FOLDED:
        pytest.skip("the C++ extension is not built")
    inputs = make_inputs(2, 3, 64, 8, 2, 2, with_mask=False)
    router_table, table_ids = folded_and_ids(inputs, 2, 0)
    folded = norm_adapter.fold_tables(inputs["norm_weight"], EPS, inputs["down_weight"], inputs["down_bias"],
                                      inputs["up_weight"], inputs["up_bias"], router_table, SCALE)
    with pytest.raises(RuntimeError, match="inference-only"):
        cpp_backend.cpp_rms_norm_adapter_folded(inputs["x"].requires_grad_(), folded, table_ids)


def count_folded_calls(monkeypatch):
    calls = []
    original = norm_adapter.rms_norm_adapter_folded

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(fastmma.patching.norm, "rms_norm_adapter_folded", spy)
    return calls


@pytest.mark.parametrize("backend_name", ["auto", "torch"])
def test_patched_model_takes_the_folded_path_only_where_exact(monkeypatch, backend_name):
    monkeypatch.setenv("FASTMMA_BACKEND", backend_name)
    model = fastmma.patch(tiny_causal_lm("llama", vocab_size=100), fastmma.MMAConfig(targets=("attn", "ffn")))
    randomize_adapters(model)
    ids = torch.randint(3, 100, (3, 9), generator=torch.Generator().manual_seed(1))
    modality = torch.tensor([1, 0, 1])
    calls = count_folded_calls(monkeypatch)
    model.eval()
    full = model(ids, modality=modality).logits.detach()                 # autograd on: the full path
    assert calls == []
    with torch.no_grad():
        first = model(ids, modality=modality).logits                     # computes the tables
        folded = model(ids, modality=modality).logits                    # cached tables: folded
    assert len(calls) == 2 * 4                                           # 2 forwards x 4 patched norms
    assert relative_error(first, full) <= 1e-6 and relative_error(folded, full) <= 1e-6
    # an in-place update of an adapter invalidates the tables and the folded copies with them
    with torch.no_grad():
        next(iter(fastmma.adapter_parameters(model).values())).mul_(1.5)
        updated = model(ids, modality=modality).logits
        updated_again = model(ids, modality=modality).logits
    expected = model(ids, modality=modality).logits.detach()
    assert relative_error(updated, expected) <= 1e-6 and relative_error(updated_again, expected) <= 1e-6
    assert relative_error(updated, full) > 1e-4
    # training mode with dropout: never folded (h needs its dropout mask)
    model.train()
    calls.clear()
    with torch.no_grad():
        model(ids, modality=modality)
        model(ids, modality=modality)
    assert calls == []


def test_reference_backend_never_takes_the_folded_path(monkeypatch):
    monkeypatch.setenv("FASTMMA_BACKEND", "reference")
    assert not backend.has_implementation(norm_adapter.OP_FOLDED, "cpu")
    model = fastmma.patch(tiny_causal_lm("llama", vocab_size=100), fastmma.MMAConfig())
    calls = count_folded_calls(monkeypatch)
    model.eval()
    ids = torch.randint(3, 100, (2, 5))
    with torch.no_grad():
        model(ids, modality=1)
        model(ids, modality=1)
    assert calls == []
