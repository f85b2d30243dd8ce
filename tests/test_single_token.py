"""The modality pass's one-token decoder layer (no q, k, RoPE or softmax) against the full layer."""
import pytest
import torch

import fastmma
from fastmma.patching.single_token import single_token_layer, supports_single_token

from .helpers import randomize_adapters, relative_error, tiny_causal_lm


def full_layer(decoder, layer, hidden):
    position_ids = torch.zeros(hidden.shape[0], 1, dtype=torch.long)
    position_embeddings = decoder.rotary_emb(hidden, position_ids)
    return layer(hidden, attention_mask=None, position_ids=position_ids, position_embeddings=position_embeddings,
                 use_cache=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_one_token_layer_equals_the_full_layer_forward_and_backward(family, dtype):
    model = tiny_causal_lm(family, dtype=torch.float64)
    assert model.config.num_attention_heads != model.config.num_key_value_heads      # grouped-query heads
    for p in model.parameters():                                                      # non-zero biases too
        torch.nn.init.normal_(p, std=0.2)
    model.to(dtype)
    layer = model.model.layers[0]
    assert supports_single_token(layer)
    hidden = torch.randn(3, 1, model.config.hidden_size, generator=torch.Generator().manual_seed(0)).to(dtype)
    outputs, grads = [], []
    for run in (lambda x: full_layer(model.model, layer, x), lambda x: single_token_layer(layer, x)):
        x = hidden.clone().requires_grad_()
        model.zero_grad(set_to_none=True)
        y = run(x)
        y.float().square().sum().backward()
        outputs.append(y.detach())
        grads.append([x.grad] + [p.grad for p in layer.parameters()])
    tolerance = 0.0 if dtype == torch.float32 else 2e-2
    assert relative_error(outputs[1], outputs[0]) <= tolerance + 1e-6
    largest = max(g.abs().max().item() for g in grads[0] if g is not None)
    for fast, full in zip(grads[1], grads[0]):
        if full is None:
            continue
        if fast is None:          # q/k projections: mathematically zero gradient, rounding noise in the full layer
            assert full.abs().max().item() <= 1e-4 * largest
            continue
        assert relative_error(fast, full) <= tolerance + 1e-5


def test_attention_dropout_in_training_falls_back_to_the_full_layer():
    model = tiny_causal_lm("llama", attention_dropout=0.1)
    layer = model.model.layers[0]
    layer.train()
    assert not supports_single_token(layer)
    layer.eval()
    assert supports_single_token(layer)


def test_patched_model_matches_the_literal_oracle_with_the_shortcut(monkeypatch):
    from fastmma import reference
    from fastmma.patching import routing

    calls = []
    original = routing.single_token_layer
    monkeypatch.setattr(routing, "single_token_layer", lambda *a: calls.append(1) or original(*a))
    model = fastmma.patch(tiny_causal_lm("mistral"), fastmma.MMAConfig(targets=("attn", "ffn")))
    randomize_adapters(model)
    ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(3))
    modality = torch.tensor([1, 0])
    with torch.no_grad():
        fast = model(ids, modality=modality).logits
        literal = reference.oracle_causal_lm_logits(model, ids, attention_mask=None, modality=modality)
    assert calls and len(calls) == model.config.num_hidden_layers
    assert relative_error(fast, literal) <= 1e-5
