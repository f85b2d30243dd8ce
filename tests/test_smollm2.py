"""The patched embedded default model (SmolLM2-135M-Instruct, fp32): identity at init, the literal
modality-token oracle, KV-cached generation, merge, and a short training run."""
import copy

import pytest
import torch

import fastmma
from fastmma.data.chat import collate_right_padded, encode_example, left_padded_prompts
from fastmma.data.text_tasks import text_instructions
from fastmma.optim import build_optimizer
from fastmma.reference import oracle_causal_lm_logits

from .helpers import randomize_adapters, relative_error

PROMPTS = ["Name a colour.", "What is the largest planet in our solar system?", "Say hello."]


@pytest.fixture(scope="module")
def smollm2():
    from fastmma.models import load_default_llm

    return load_default_llm()


@pytest.fixture
def patched(smollm2):
    model, tokenizer = smollm2
    return fastmma.patch(copy.deepcopy(model), fastmma.MMAConfig(dropout=0.0)), tokenizer


def test_default_model_is_smollm2(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    assert tokenizer.chat_template


def test_identity_at_init(smollm2, patched, monkeypatch):
    """Bit-level on the plain PyTorch path; the fused C++ norm sums its statistics in another order,
    so there the bound is relative (1e-5 of the logits' scale)."""
    base, tokenizer = smollm2
    model, _ = patched
    batch = left_padded_prompts(tokenizer, PROMPTS)
    with torch.no_grad():
        expected = base(**batch).logits
        for modality in (0, 1):
            assert relative_error(model(**batch, modality=modality).logits, expected) <= 1e-5
        monkeypatch.setenv("FASTMMA_BACKEND", "torch")
        for modality in (0, 1):
            assert (model(**batch, modality=modality).logits - expected).abs().max() <= 1e-6


def test_matches_modality_token_oracle(patched):
    model, tokenizer = patched
    randomize_adapters(model, std=0.05)
    ids = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog")["input_ids"]] * 2)
    with torch.no_grad():
        for modality in (0, 1, torch.tensor([1, 0])):
            fast = model(ids, modality=modality).logits
            oracle = oracle_causal_lm_logits(model, ids, modality=modality)
            assert relative_error(fast, oracle) <= 1e-4


def test_cached_generation_and_merge(patched):
    model, tokenizer = patched
    randomize_adapters(model, std=0.05)
    batch = left_padded_prompts(tokenizer, PROMPTS)
    assert (batch["attention_mask"] == 0).any()                  # really left-padded
    gen = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    for modality in (0, 1):
        cached = model.generate(**batch, modality=modality, use_cache=True, **gen)
        uncached = model.generate(**batch, modality=modality, use_cache=False, **gen)
        assert torch.equal(cached, uncached)
        merged = fastmma.merge(copy.deepcopy(model), modality=modality)
        assert torch.equal(merged.generate(**batch, use_cache=True, **gen), cached)
        with torch.no_grad():
            assert relative_error(merged(**batch).logits, model(**batch, modality=modality).logits) <= 1e-4


def test_thirty_adamw_steps_lower_the_loss(patched):
    model, tokenizer = patched
    samples = text_instructions(4, seed=3)
    batch = collate_right_padded([encode_example(tokenizer, *s.turns[0]) for s in samples], tokenizer.pad_token_id)
    optimizer = build_optimizer(model, lr=3e-3)
    adapters = fastmma.adapter_parameters(model)
    gradient_seen = {name: False for name in adapters}
    model.train()
    losses = []
    for _ in range(30):
        loss = model(**batch, modality=1).loss
        loss.backward()
        for name, param in adapters.items():
            gradient_seen[name] |= bool(param.grad is not None and param.grad.abs().max() > 0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(gradient_seen.values()), [name for name, seen in gradient_seen.items() if not seen]
    assert all(not p.requires_grad for n, p in model.named_parameters() if n not in adapters)
