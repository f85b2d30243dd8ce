"""Every memory and speed feature of MMAConfig on (its defaults: lean RMSNorm, recomputing SwiGLU, chunked
LM head + loss, layer recomputation, fused rotary embedding, the "fastmma" CPU attention, cached autocast
weights) gives the losses and gradients of the same adapters with all of them off (transformers' RMSNorm,
SwiGLU, rotary embedding, SDPA and full-logits loss), step by step over 10 AdamW steps."""

import pytest
import torch

import fastmma

from .helpers import ids_and_labels, loss_and_grads_from_embeddings, relative_error, tiny_causal_lm

ALL_OFF = dict(recompute_swiglu=False, recompute_norm=False, chunked_loss=False, recompute_attention=False,
               fused_rotary=False, cache_autocast_weights=False, attn_implementation="sdpa")


def _pair(family):
    """(every feature off, the defaults), the same base and the same random adapters, in training mode."""
    models = []
    for config in (ALL_OFF, {}):
        model = fastmma.patch(tiny_causal_lm(family, num_hidden_layers=3), fastmma.MMAConfig(targets=("attn", "ffn"),
                                                                                             **config))
        models.append(model.train())
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for (_, p), (_, q) in zip(sorted(fastmma.adapter_parameters(models[0]).items()),
                                  sorted(fastmma.adapter_parameters(models[1]).items())):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
            q.copy_(p)
    return models


@pytest.mark.parametrize("family,autocast", [("llama", False), ("qwen2", False), ("llama", True)])
def test_defaults_match_every_feature_off_over_ten_adamw_steps(family, autocast):
    plain, fast = _pair(family)
    plain_params, fast_params = (fastmma.adapter_parameters(m) for m in (plain, fast))
    optimizers = [torch.optim.AdamW(params.values(), lr=1e-3) for params in (plain_params, fast_params)]
    tolerance = 3e-2 if autocast else 1e-4                    # bf16 autocast: each path rounds differently
    for step in range(10):
        ids, labels = ids_and_labels(step)
        modality = torch.tensor([0, 1, step % 2])
        loss, grads = loss_and_grads_from_embeddings(plain, ids, labels, modality, seed=step, autocast=autocast)
        got_loss, got_grads = loss_and_grads_from_embeddings(fast, ids, labels, modality, seed=step,
                                                             autocast=autocast)
        assert abs(got_loss.item() - loss.item()) <= tolerance * abs(loss.item()), step
        assert grads.keys() == got_grads.keys() and len(grads) > 10
        scale = max(g.abs().max().item() for g in grads.values())
        for name in grads:
            assert grads[name].abs().sum() > 0, name
            if autocast:   # bf16: a near-cancelling gradient (the router's) is compared at the gradients' scale
                assert (got_grads[name] - grads[name]).abs().max().item() <= tolerance * scale, (step, name)
            else:
                assert relative_error(got_grads[name], grads[name]) <= tolerance, (step, name)
        for optimizer in optimizers:
            optimizer.step()
        with torch.no_grad():                                  # the next step starts both from the same weights
            for name, p in plain_params.items():
                fast_params[name].copy_(p)


def test_training_keeps_no_kv_cache_unless_asked():
    """A training forward (train mode, autograd on) would otherwise fill a DynamicCache that nothing reads and
    keep every layer's k and v alive through backward; use_cache=True and inference still get their cache."""
    from fastmma.kv_cache import output_cache

    model = fastmma.patch(tiny_causal_lm("llama"), fastmma.MMAConfig()).train()
    assert model.config.use_cache
    ids, labels = ids_and_labels(0)
    assert output_cache(model(ids, labels=labels, modality=0)) is None               # chunked loss path
    assert output_cache(model(ids, modality=0)) is None                              # plain forward
    cache = output_cache(model(ids, modality=0, use_cache=True))
    assert cache is not None and cache.get_seq_length() == ids.shape[1]
    with torch.no_grad():
        assert output_cache(model(ids, modality=0)) is not None                      # no autograd: cached
    model.eval()
    assert output_cache(model(ids, modality=0)) is not None                          # eval mode: cached
