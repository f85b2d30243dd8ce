"""fastmma.patch / unpatch / merge and modality routing on tiny random Llama, Mistral and Qwen2 models."""
import copy

import pytest
import torch

import fastmma
from fastmma.checkpointing import checkpointed_layers, enable_checkpointing
from fastmma.reference import oracle_causal_lm_logits

from .helpers import FAMILIES, randomize_adapters, relative_error, tiny_causal_lm

ALL_TARGETS = fastmma.MMAConfig(targets=("attn", "ffn"), dropout=0.0)


def token_batch(batch=3, length=11, vocab=97, seed=0):
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def left_padded_batch():
    """Three prompts of lengths 9, 5 and 2, left-padded with pad id 0."""
    ids = token_batch(3, 9, seed=5)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :7] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param


def test_identity_at_init(family):
    base = tiny_causal_lm(family)
    model = fastmma.patch(copy.deepcopy(base), ALL_TARGETS)
    ids = token_batch()
    with torch.no_grad():
        expected = base(ids).logits
        for modality in (0, 1):
            assert (model(ids, modality=modality).logits - expected).abs().max() <= 1e-6


def test_matches_literal_modality_token_oracle(family):
    model = fastmma.patch(tiny_causal_lm(family), ALL_TARGETS)
    randomize_adapters(model)
    ids = token_batch()
    attention_mask = torch.ones_like(ids)
    attention_mask[0, 8:] = 0                    # right padding: positions stay as in the oracle
    with torch.no_grad():
        for modality in (0, 1, torch.tensor([1, 0, 1])):
            fast = model(ids, attention_mask=attention_mask, modality=modality).logits
            oracle = oracle_causal_lm_logits(model, ids, attention_mask, modality=modality)
            valid = attention_mask.bool()
            assert relative_error(fast[valid], oracle[valid]) <= 1e-5
        base_logits = fastmma.unpatch(copy.deepcopy(model))(ids).logits
        assert relative_error(model(ids, modality=1).logits, base_logits) > 1e-2   # adapters are not inert


def test_mixed_modality_batch_equals_solo_runs():
    model = fastmma.patch(tiny_causal_lm("llama"), ALL_TARGETS)
    randomize_adapters(model)
    ids = token_batch()
    with torch.no_grad():
        mixed = model(ids, modality=torch.tensor([0, 1, 1])).logits
        for row, modality in enumerate((0, 1, 1)):
            solo = model(ids[row:row + 1], modality=modality).logits[0]
            torch.testing.assert_close(mixed[row], solo, rtol=1e-5, atol=1e-5)
        assert relative_error(model(ids, modality=0).logits, model(ids, modality=1).logits) > 1e-3


@pytest.mark.parametrize("modality", [0, 1, "mixed"])
def test_cached_generation_equals_uncached(family, modality):
    model = fastmma.patch(tiny_causal_lm(family), ALL_TARGETS)
    randomize_adapters(model)
    ids, mask = left_padded_batch()
    modality = torch.tensor([1, 0, 1]) if modality == "mixed" else modality
    kwargs = dict(attention_mask=mask, modality=modality, max_new_tokens=8, do_sample=False, pad_token_id=0)
    cached = model.generate(ids, use_cache=True, **kwargs)
    uncached = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    other = model.generate(ids, use_cache=True, **{**kwargs, "modality": 1 - torch.as_tensor(modality)})
    assert not torch.equal(cached, other)        # the modality changes what is generated


def test_merge_matches_unmerged(family):
    model = fastmma.patch(tiny_causal_lm(family), ALL_TARGETS)
    randomize_adapters(model, std=0.1)
    ids, mask = left_padded_batch()
    gen = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    for modality in (0, 1):
        with torch.no_grad():
            expected = model(ids, attention_mask=mask, modality=modality).logits
        expected_tokens = model.generate(ids, modality=modality, **gen)
        merged = fastmma.merge(copy.deepcopy(model), modality=modality)
        assert not fastmma.is_patched(merged) and type(merged) is FAMILIES[family][1]
        assert not any("adapter" in name or "fastmma" in name for name, _ in merged.named_parameters())
        with torch.no_grad():
            assert relative_error(merged(ids, attention_mask=mask).logits, expected) <= 1e-4
        assert torch.equal(merged.generate(ids, **gen), expected_tokens)
        assert torch.equal(merged.generate(ids, use_cache=False, **gen), expected_tokens)


def test_merged_llama_survives_save_pretrained(tmp_path):
    model = fastmma.patch(tiny_causal_lm("llama"), ALL_TARGETS)
    randomize_adapters(model, std=0.1)
    merged = fastmma.merge(model, modality=1)
    merged.save_pretrained(tmp_path)
    reloaded = type(merged).from_pretrained(tmp_path).eval()
    ids = token_batch()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, merged(ids).logits, rtol=0, atol=0)


def test_merge_rejects_bad_modality():
    model = fastmma.patch(tiny_causal_lm("llama"))
    for bad in (2, -1, torch.tensor([0, 1]), 0.5):
        with pytest.raises(ValueError, match="merge"):
            fastmma.merge(model, modality=bad)


def test_a_merged_model_says_it_was_merged(tmp_path):
    model = fastmma.merge(fastmma.patch(tiny_causal_lm("llama")), modality=1)
    actions = {"save_adapters": lambda: fastmma.save_adapters(model, tmp_path), "merge": lambda: fastmma.merge(model),
               "unpatch": lambda: fastmma.unpatch(model)}
    for name, action in actions.items():
        with pytest.raises(RuntimeError, match=f"fastmma.{name}: this model was merged for modality 1"):
            action()
    with pytest.raises(RuntimeError, match="not patched"):
        fastmma.save_adapters(tiny_causal_lm("llama"), tmp_path)


def test_a_merged_model_serves_only_its_modality():
    model = fastmma.patch(tiny_causal_lm("llama"), ALL_TARGETS)
    randomize_adapters(model, std=0.1)
    merged = fastmma.merge(model, modality=1)
    ids = token_batch()
    with torch.no_grad():
        expected = merged(ids).logits
        for same in (1, torch.tensor([1, 1, 1])):
            assert torch.equal(merged(ids, modality=same).logits, expected)
        for other in (0, torch.tensor([1, 0, 1]), 1.0):
            with pytest.raises(ValueError, match="merged for modality 1.*serves only that modality"):
                merged(ids, modality=other)
        repatched = fastmma.patch(merged, ALL_TARGETS)            # patched again: `modality=` routes once more
        randomize_adapters(repatched, std=0.1)
        assert relative_error(repatched(ids, modality=0).logits, repatched(ids, modality=1).logits) > 1e-3


def test_a_misspelled_modality_keyword_is_refused():
    model = fastmma.patch(tiny_causal_lm("llama"))
    for name in ("modalities", "modality_ids", "modality_id", "Modality", "modaltiy"):
        with pytest.raises(TypeError, match="the modality keyword is `modality=`"):
            model(token_batch(), **{name: 1})
    with torch.no_grad():                                         # other keywords still pass through
        assert len(model(token_batch(), output_hidden_states=True, modality=1).hidden_states) == 3


def test_trainable_summary_names_the_expected_type():
    with pytest.raises(TypeError, match="expected a torch.nn.Module.*got NoneType"):
        fastmma.trainable_summary(None)


def test_unpatch_is_bit_exact(family):
    base = tiny_causal_lm(family)
    requires_grad = {n: p.requires_grad for n, p in base.named_parameters()}
    model = fastmma.patch(copy.deepcopy(base), ALL_TARGETS)
    randomize_adapters(model)
    ids = token_batch()
    model(ids, modality=1)
    fastmma.unpatch(model)
    assert type(model) is type(base) and not fastmma.is_patched(model)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires_grad
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base(ids).logits)
    fastmma.patch(model)                         # and it can be patched again
    assert fastmma.is_patched(model)


def test_base_names_kept_and_frozen():
    base = tiny_causal_lm("llama")
    base_keys = set(base.state_dict())
    model = fastmma.patch(copy.deepcopy(base), ALL_TARGETS)
    keys = set(model.state_dict())
    assert base_keys <= keys
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(fastmma.adapter_parameters(model))
    assert all(n not in base_keys for n in trainable)
    # a base checkpoint still loads into the patched model
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and set(missing) == trainable
    layers, width = base.config.num_hidden_layers, base.config.hidden_size
    per_adapter = 8 * width + 8 + 2 * width * 4 + 2 * width + 2 * width + 2
    assert fastmma.trainable_parameters(model)[0] == layers * 2 * per_adapter + 2 * width
    assert "trainable params" in fastmma.trainable_summary(model)


def test_parameter_count_matches_paper_per_adapter():
    from fastmma.adapters import MMAAdapter

    adapter = MMAAdapter(4096, fastmma.MMAConfig())
    assert sum(p.numel() for p in adapter.parameters()) == 81_930   # mma.md: D=4096, r=8, G=2, E=2, with router


def test_patch_errors():
    model = fastmma.patch(tiny_causal_lm("llama"))
    with pytest.raises(RuntimeError, match="already patched"):
        fastmma.patch(model)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(NotImplementedError, match="llama, mistral, qwen2"):
        fastmma.patch(gpt2)
    with pytest.raises(ValueError, match="MMAConfig.groups"):
        fastmma.patch(tiny_causal_lm("llama"), fastmma.MMAConfig(rank=10, groups=5))
    with pytest.raises(RuntimeError, match="not patched"):
        fastmma.unpatch(tiny_causal_lm("llama"))


@pytest.mark.parametrize("modality, error", [
    (2, ValueError), (-1, ValueError), (torch.tensor([0, 1]), ValueError), (0.0, TypeError),
    (torch.tensor([0.0, 1.0, 0.0]), TypeError),
])
def test_bad_modality_is_rejected(modality, error):
    model = fastmma.patch(tiny_causal_lm("llama"))
    with pytest.raises(error, match="modality"):
        model(token_batch(), modality=modality)


def test_gradients_reach_every_adapter_and_checkpointing_is_exact():
    model = fastmma.patch(tiny_causal_lm("llama"), ALL_TARGETS)
    randomize_adapters(model)
    model.train()
    ids = token_batch()

    def grads():
        model.zero_grad()
        loss = model(ids, labels=ids, modality=torch.tensor([0, 1, 1])).loss
        loss.backward()
        return {n: p.grad.clone() for n, p in fastmma.adapter_parameters(model).items()}

    plain = grads()
    assert all(g.abs().max() > 0 for g in plain.values()), [n for n, g in plain.items() if not g.abs().max() > 0]
    for every_n_layers in (1, 2):                   # every layer, then layers 0, 2, ... only
        enable_checkpointing(model, every_n_layers=every_n_layers)
        assert checkpointed_layers(model) == list(range(0, model.config.num_hidden_layers, every_n_layers))
        checkpointed = grads()
        for name in plain:
            torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)


def test_dropout_only_in_training():
    model = fastmma.patch(tiny_causal_lm("llama"), fastmma.MMAConfig(dropout=0.5))
    randomize_adapters(model)
    ids = token_batch()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
        model.train()
        assert not torch.equal(model(ids).logits, model(ids).logits)


def test_router_tables_refresh_after_an_update():
    model = fastmma.patch(tiny_causal_lm("llama"))
    randomize_adapters(model)
    ids = token_batch()
    with torch.no_grad():
        before = model(ids, modality=1).logits
        model.fastmma_modality_embedding.weight.mul_(-1.0)       # in-place, like an optimizer step
        after = model(ids, modality=1).logits
        oracle = oracle_causal_lm_logits(model, ids, modality=1)
    assert relative_error(after, before) > 1e-4
    assert relative_error(after, oracle) <= 1e-5
