"""The "fastmma" attention implementation in a patched model: the same losses, gradients and generations as
SDPA, the C++ path for training-shaped calls only (SDPA for padding masks and cached decoding), and layer
recomputation that skips the attention forward in backward."""
import copy

import pytest
import torch

import fastmma
from fastmma.ops import cpp_backend, cpp_causal_attention
from fastmma.patching import cpu_attention

from .helpers import randomize_adapters, tiny_causal_lm

pytestmark = pytest.mark.skipif(not cpp_backend.is_available(),
                                reason="fastmma's C++ extension is not built (pip install --no-build-isolation -e .)")


def _models(family="llama", configs=({"attn_implementation": "sdpa"}, {}), **common):
    """Patched copies of one tiny 3-layer base, one per config (default: SDPA, then the default "fastmma"
    attention), with the same random adapters, in training mode."""
    base = tiny_causal_lm(family, num_hidden_layers=3)
    models = []
    for config in configs:
        model = fastmma.patch(copy.deepcopy(base), fastmma.MMAConfig(**config, **common))
        randomize_adapters(model, std=0.05)
        models.append(model.train())
    assert models[-1].config._attn_implementation == cpu_attention.NAME
    return models


def _loss_and_grads(model, ids, **kwargs):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    loss = model(ids, labels=ids, modality=torch.tensor([0, 1]), **kwargs).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in fastmma.adapter_parameters(model).items()}


@pytest.fixture
def backward_calls(monkeypatch):
    calls = []
    original = cpp_causal_attention.attention_backward
    monkeypatch.setattr(cpp_causal_attention, "attention_backward",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_same_losses_and_gradients_as_sdpa(family, backward_calls):
    sdpa, ours = _models(family, dropout=0.1)
    ids = torch.randint(3, 97, (2, 71), generator=torch.Generator().manual_seed(1))      # two blocks and a tail
    loss, grads = _loss_and_grads(sdpa, ids)
    got_loss, got_grads = _loss_and_grads(ours, ids)
    assert len(backward_calls) == 3                                                       # every layer
    torch.testing.assert_close(got_loss, loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == got_grads.keys()
    for name in grads:
        torch.testing.assert_close(got_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_padding_mask_and_decoding_take_sdpa(backward_calls):
    sdpa, ours = _models()
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0                                                                          # left padding
    loss, grads = _loss_and_grads(sdpa, ids, attention_mask=mask)
    got_loss, got_grads = _loss_and_grads(ours, ids, attention_mask=mask)
    assert backward_calls == []
    assert torch.equal(got_loss, loss) and all(torch.equal(got_grads[n], grads[n]) for n in grads)
    for model in (sdpa, ours):
        model.eval()
    prompt = ids[:1]
    generated = [m.generate(prompt, modality=0, max_new_tokens=6, do_sample=False) for m in (sdpa, ours)]
    assert torch.equal(generated[0], generated[1]) and generated[0].shape[1] == prompt.shape[1] + 6


def test_layer_recomputation_replays_no_attention_forward(monkeypatch):
    plain, recomputing = _models(configs=({}, {"recompute_attention": True}))
    ids = torch.randint(3, 97, (2, 30), generator=torch.Generator().manual_seed(3))
    forwards = []
    original = cpp_causal_attention.forward_with_lse
    monkeypatch.setattr(cpp_causal_attention, "forward_with_lse", lambda *a: forwards.append(1) or original(*a))
    loss, grads = _loss_and_grads(plain, ids)
    assert len(forwards) == 3
    forwards.clear()
    got_loss, got_grads = _loss_and_grads(recomputing, ids)
    assert len(forwards) == 3                                         # the forward only: the replay reused the lse
    assert torch.equal(got_loss, loss)
    for name in grads:
        assert torch.equal(got_grads[name], grads[name]), name


def test_a_right_padded_batch_takes_the_cpu_attention_and_matches_sdpa_on_the_real_tokens(backward_calls):
    sdpa, ours = _models()
    ids = torch.randint(3, 97, (3, 20), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, 15:] = 0                                                                       # right padding
    mask[2, 9:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    results = []
    for model in (sdpa, ours):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        loss = model(ids, attention_mask=mask, labels=labels, modality=torch.tensor([0, 1, 1])).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in fastmma.adapter_parameters(model).items()}))
    assert len(backward_calls) == 3
    (loss, grads), (got_loss, got_grads) = results
    torch.testing.assert_close(got_loss, loss, rtol=1e-6, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(got_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("mask,expected", [
    ([[1, 1, 1, 0], [1, 1, 1, 1]], True),
    ([[1, 1, 1, 1]], True),
    ([[0, 1, 1, 1]], False),                                # left padding
    ([[1, 0, 1, 1]], False),                                # a hole
])
def test_only_right_padding_drops_the_mask(mask, expected):
    mask = torch.tensor(mask)
    length = mask.shape[1]
    assert cpu_attention._right_padded(mask, length) is expected
    built = cpu_attention.fastmma_mask(mask.shape[0], length, length, attention_mask=mask)
    assert (built is None) is expected
    cached = cpu_attention.fastmma_mask(mask.shape[0], 1, length, q_offset=length - 1, attention_mask=mask)
    assert cached is not None or bool(mask.all())           # decoding with a cache keeps the padding mask
