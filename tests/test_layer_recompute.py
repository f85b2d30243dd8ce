"""MMAConfig.recompute_attention: the recomputing decoder layer gives the same losses and gradients as the
plain patched layer (it replays the kept GEMM outputs and recomputes the rest), in every family and dtype."""

import pytest
import torch

import fastmma
from fastmma.kv_cache import output_cache
from fastmma.memory.layer_recompute import LayerStash

from .helpers import ids_and_labels, loss_and_grads_from_embeddings, patched_pair


def _pair(family="llama", dtype=torch.float32, **config):
    """(plain, recomputing): the same base and adapters, recompute_attention off and on."""
    return patched_pair("recompute_attention", family, dtype, **config)


def _loss_and_grads(model, ids, labels, seed=0, autocast=False, **kwargs):
    return loss_and_grads_from_embeddings(model, ids, labels, torch.tensor([0, 1, 1]), seed, autocast, **kwargs)


def _inputs(seed=3):
    return ids_and_labels(seed)                                                          # odd length


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_recomputing_layers_give_the_plain_losses_and_gradients(family, dtype):
    plain, recomputing = _pair(family, dtype, dropout=0.1)          # dropout: the replay must draw the same mask
    ids, labels = _inputs()
    loss, grads = _loss_and_grads(plain, ids, labels)
    got_loss, got_grads = _loss_and_grads(recomputing, ids, labels)
    # the replay reruns the same kernels on the same inputs: identical, not merely close
    assert torch.equal(got_loss, loss)
    assert grads.keys() == got_grads.keys() and len(grads) > 10
    for name in grads:
        assert torch.equal(got_grads[name], grads[name]), name
        assert grads[name].abs().sum() > 0, name


def test_recomputing_layers_under_bf16_autocast_and_with_a_kv_cache():
    plain, recomputing = _pair()
    ids, labels = _inputs(5)
    for kwargs in ({}, {"use_cache": True}):
        loss, grads = _loss_and_grads(plain, ids, labels, autocast=True, **kwargs)
        got_loss, got_grads = _loss_and_grads(recomputing, ids, labels, autocast=True, **kwargs)
        assert torch.equal(got_loss, loss)
        for name in grads:
            assert torch.equal(got_grads[name], grads[name]), name


def test_the_replay_leaves_the_kv_cache_as_the_forward_filled_it():
    """The backward replay must not append the layer's k, v to the cache a second time (whatever keyword,
    `cache` or `past_key_values`, this transformers version gives it)."""
    _, recomputing = _pair()
    ids, labels = _inputs(7)
    output = recomputing(ids, labels=labels, modality=0, use_cache=True)
    cache = output_cache(output)
    assert cache.get_seq_length() == ids.shape[1]
    output.loss.backward()
    assert cache.get_seq_length() == ids.shape[1]
    assert all(layer.keys.shape[-2] == ids.shape[1] for layer in cache.layers)


def test_recomputing_layers_over_ten_adamw_steps():
    plain, recomputing = _pair(targets=("attn", "ffn"))
    optimizers = [torch.optim.AdamW(fastmma.adapter_parameters(m).values(), lr=1e-3) for m in (plain, recomputing)]
    for step in range(10):
        ids, labels = _inputs(step)
        results = [_loss_and_grads(model, ids, labels, seed=step) for model in (plain, recomputing)]
        assert torch.equal(results[0][0], results[1][0])
        for optimizer in optimizers:
            optimizer.step()
    for (name, p), (_, q) in zip(fastmma.adapter_parameters(plain).items(), fastmma.adapter_parameters(recomputing).items()):
        assert torch.equal(p, q), name


def test_generation_and_evaluation_do_not_recompute():
    _, model = _pair()
    ids, _ = _inputs()
    model.eval()
    with torch.no_grad():
        out = model.generate(ids[:1], max_new_tokens=4, do_sample=False, modality=0)
    assert out.shape == (1, ids.shape[1] + 4)


def test_a_replay_without_its_kept_output_names_the_switch():
    stash = LayerStash()
    stash.replaying = True
    with pytest.raises(RuntimeError, match="recompute_attention"):
        stash.linear(torch.nn.Linear(4, 4), torch.randn(2, 4))


def test_the_replay_computes_no_swiglu_product(monkeypatch):
    from fastmma.patching import mlp

    calls = {"product": 0, "saves_only": 0}
    for name, key in (("swiglu", "product"), ("swiglu_saves_only", "saves_only")):
        original = getattr(mlp, name)
        monkeypatch.setattr(mlp, name, lambda *a, _f=original, _k=key: calls.__setitem__(_k, calls[_k] + 1) or _f(*a))
    plain, recomputing = _pair()
    ids, labels = _inputs(7)
    loss, grads = _loss_and_grads(plain, ids, labels)
    assert calls == {"product": 3, "saves_only": 0}
    got_loss, got_grads = _loss_and_grads(recomputing, ids, labels)
    assert calls == {"product": 6, "saves_only": 3}                  # forward: the product; backward: saves only
    assert torch.equal(got_loss, loss)
    for name in grads:
        assert torch.equal(got_grads[name], grads[name]), name


def test_a_base_linear_unfrozen_after_patching_gets_its_gradient():
    plain, recomputing = _pair()
    for model in (plain, recomputing):
        model.model.layers[1].self_attn.v_proj.weight.requires_grad_(True)
        model.model.layers[2].mlp.up_proj.weight.requires_grad_(True)
    ids, labels = _inputs(8)
    loss, _ = _loss_and_grads(plain, ids, labels)
    got_loss, _ = _loss_and_grads(recomputing, ids, labels)
    assert torch.equal(got_loss, loss)
    for path in ("model.layers.1.self_attn.v_proj.weight", "model.layers.2.mlp.up_proj.weight"):
        want, got = (m.get_parameter(path).grad for m in (plain, recomputing))
        assert want is not None and want.abs().sum() > 0
        assert torch.equal(got, want), path
