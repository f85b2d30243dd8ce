"""MMAConfig.fused_rotary: LLaMA attention with the C++ rotary embedding gives transformers' losses, gradients
and generations (within float32 rounding: the kernel rounds once where transformers rounds three times),
takes the kernel in training and decoding, leaves other attention classes and autocast's mixed dtypes to
transformers, and goes away with unpatch."""

import pytest
import torch

import fastmma
from fastmma.ops import cpp_backend, cpp_rotary
from fastmma.patching import rotary_attention

from .helpers import ids_and_labels, loss_and_grads_from_embeddings, patched_pair, relative_error

pytestmark = [pytest.mark.skipif(not cpp_backend.is_available(),
                                 reason="fastmma's C++ extension is not built (pip install --no-build-isolation -e .)")]


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []
    original = cpp_rotary.cpp_rotary
    monkeypatch.setattr(cpp_rotary, "cpp_rotary", lambda *a: calls.append(a[0].shape) or original(*a))
    return calls


def _loss_and_grads(model, ids, labels, autocast=False):
    return loss_and_grads_from_embeddings(model, ids, labels, torch.tensor([0, 1, 1]), autocast=autocast)


def _inputs(seed=3):
    return ids_and_labels(seed)                                                          # odd length


@pytest.mark.parametrize("recompute_attention", [False, True])
def test_same_losses_and_gradients_as_transformers_rotary(kernel_calls, recompute_attention):
    plain, fused = patched_pair("fused_rotary", dropout=0.1, recompute_attention=recompute_attention)
    loss, grads = _loss_and_grads(plain, *_inputs())
    assert kernel_calls == []
    got_loss, got_grads = _loss_and_grads(fused, *_inputs())
    assert len(kernel_calls) == 2 * 3 * (2 if recompute_attention else 1)        # q and k, 3 layers (+ replay)
    assert abs(got_loss.item() - loss.item()) <= 1e-6 * abs(loss.item())
    assert grads.keys() == got_grads.keys() and len(grads) > 10
    for name in grads:
        assert grads[name].abs().sum() > 0, name
        assert relative_error(got_grads[name], grads[name]) < 1e-5, name


def test_bf16_weights_take_the_kernel_and_autocast_keeps_transformers_rotary(kernel_calls):
    plain, fused = patched_pair("fused_rotary", dtype=torch.bfloat16, recompute_attention=False)
    loss, grads = _loss_and_grads(plain, *_inputs(4))
    got_loss, got_grads = _loss_and_grads(fused, *_inputs(4))
    assert len(kernel_calls) == 6 and abs(got_loss.item() - loss.item()) < 2e-2 * abs(loss.item())
    for name in grads:
        assert relative_error(got_grads[name], grads[name]) < 5e-2, name
    kernel_calls.clear()
    plain, fused = patched_pair("fused_rotary", recompute_attention=False)
    loss, grads = _loss_and_grads(plain, *_inputs(5), autocast=True)
    got_loss, got_grads = _loss_and_grads(fused, *_inputs(5), autocast=True)
    assert kernel_calls == []                                 # bf16 projections, fp32 tables: transformers' rotary
    assert torch.equal(got_loss, loss)
    for name in grads:
        assert torch.equal(got_grads[name], grads[name]), name


def test_generation_with_a_kv_cache_matches(kernel_calls):
    plain, fused = (model.eval() for model in patched_pair("fused_rotary"))
    ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(6))
    gen = dict(max_new_tokens=6, do_sample=False, modality=torch.tensor([0, 1]), use_cache=True)
    expected = plain.generate(ids, **gen)
    assert torch.equal(fused.generate(ids, **gen), expected)
    assert len(kernel_calls) == 2 * 3 * 6 and kernel_calls[-1][1] == 1          # prefill, then one new token a step


@pytest.mark.parametrize("family,swapped", [("llama", True), ("mistral", False), ("qwen2", False)])
def test_only_llama_attention_is_swapped_and_unpatch_restores_it(family, swapped):
    _, fused = patched_pair("fused_rotary", family)
    attentions = [layer.self_attn for layer in fused.model.layers]
    bases = [type(a).__mro__[1] if swapped else type(a) for a in attentions]
    assert all(rotary_attention.rotary_base(a) is (base if swapped else None) for a, base in zip(attentions, bases))
    fastmma.unpatch(fused)
    assert all(type(a) is base and rotary_attention.rotary_base(a) is None for a, base in zip(attentions, bases))
