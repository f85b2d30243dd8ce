"""MMAConfig.cache_autocast_weights: frozen Linear weights cast once under autocast give the same losses and
gradients as autocast's cast at every call, follow in-place weight changes, and go away with unpatch."""

import pytest
import torch
from torch import nn

import fastmma
from fastmma.autocast import _CACHE

from .helpers import patched_pair


def _pair(family="llama", **config):
    """(casting at every call, caching): the same fp32 base and adapters."""
    return patched_pair("cache_autocast_weights", family, **config)


def _loss_and_grads(model, ids, labels, autocast, seed=0):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=labels, modality=torch.tensor([0, 1])).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in fastmma.adapter_parameters(model).items()}


def _inputs(seed):
    ids = torch.randint(3, 97, (2, 11), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[:, :3] = -100
    return ids, labels


def _assert_same(pair, ids, labels, autocast, seed=0):
    (loss, grads), (got_loss, got_grads) = (_loss_and_grads(m, ids, labels, autocast, seed) for m in pair)
    assert torch.equal(got_loss, loss)
    assert grads.keys() == got_grads.keys() and len(grads) > 5
    for name in grads:
        assert torch.equal(got_grads[name], grads[name]), name
        assert grads[name].abs().sum() > 0, name


@pytest.mark.parametrize("family", ["llama", "qwen2"])                      # qwen2: q, k, v with a bias
@pytest.mark.parametrize("autocast", [True, False])
def test_cached_casts_give_autocasts_losses_and_gradients(family, autocast):
    pair = _pair(family, dropout=0.1, targets=("attn", "ffn"))
    _assert_same(pair, *_inputs(1), autocast)
    cached = [m for m in pair[1].modules() if _CACHE in m.__dict__]
    assert len(cached) == (7 * 3 if autocast else 0)                        # every frozen Linear of the 3 layers
    assert all(m.__dict__[_CACHE][1].dtype == torch.bfloat16 for m in cached)


def test_cached_cast_follows_an_in_place_weight_change_and_recompute_attention():
    pair = _pair(recompute_attention=True)
    _assert_same(pair, *_inputs(2), autocast=True)
    for model in pair:
        with torch.no_grad():
            model.model.layers[1].self_attn.k_proj.weight.mul_(1.5)      # k_proj: cached beside the recompute
    _assert_same(pair, *_inputs(3), autocast=True, seed=3)


def test_unpatch_drops_the_cached_casts():
    _, model = _pair()
    _loss_and_grads(model, *_inputs(4), autocast=True)
    fastmma.unpatch(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is nn.Linear and _CACHE not in m.__dict__ for m in linears)


def test_a_weight_that_is_a_view_into_a_larger_buffer_is_not_copied():
    _, model = _pair()
    q_proj = model.model.layers[0].self_attn.q_proj
    flat = torch.cat([q_proj.weight.detach().reshape(-1), torch.zeros(7)])           # as FSDP's flat parameters
    q_proj.weight = nn.Parameter(flat[:q_proj.weight.numel()].view_as(q_proj.weight), requires_grad=False)
    _loss_and_grads(model, *_inputs(5), autocast=True)
    assert _CACHE not in q_proj.__dict__ and _CACHE in model.model.layers[0].self_attn.k_proj.__dict__
