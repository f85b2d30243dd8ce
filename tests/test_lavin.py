"""LaVIN on tiny random models: ViT routing, sequence assembly, the modality-token oracle, generation,
save/load."""
import json

import pytest
import torch

import fastmma
from fastmma.data.chat import IGNORE_INDEX
from fastmma.data.samples import VLSample
from fastmma.lavin import LaVIN, LaVINConfig
from fastmma.lavin.pixels import pixel_values
from fastmma.patching.clip import cls_features
from fastmma.reference import oracle_causal_lm_logits

from .helpers import relative_error
from .lavin_helpers import randomize_trainable, solid_image, striped_image, tiny_lavin, tiny_llm, tiny_vit, tokenizer

IMAGES = [striped_image(1), striped_image(2), solid_image((255, 0, 0))]


def test_vit_adapters_are_identity_at_init():
    plain = tiny_vit()
    model = tiny_lavin()
    pixels = pixel_values(IMAGES, 32)
    with torch.no_grad():
        torch.testing.assert_close(cls_features(model.vision, pixels, 2), cls_features(plain, pixels, 2),
                                   rtol=0, atol=1e-6)


def test_each_image_is_routed_by_its_own_cls_token():
    model = tiny_lavin()
    randomize_trainable(model)
    pixels = pixel_values(IMAGES, 32)
    with torch.no_grad():
        together = cls_features(model.vision, pixels, 2)                       # [3, 2, D_vit]
        for row in range(3):
            alone = cls_features(model.vision, pixels[row:row + 1], 2)[0]
            torch.testing.assert_close(together[row], alone, rtol=1e-5, atol=1e-6)
        assert relative_error(together, cls_features(tiny_vit(), pixels, 2)) > 1e-3   # adapters act


def test_visual_tokens_shape_and_count():
    model = tiny_lavin()
    assert model.num_visual_tokens == 2                                       # 4 blocks, every 2nd
    tokens = model.visual_tokens(IMAGES)
    assert tokens.shape == (3, 2, model.llm.config.hidden_size)
    assert model.visual_tokens([]) is None


def test_text_only_samples_never_run_the_vision_encoder():
    model = tiny_lavin()
    seen = []
    model.vision.embeddings.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    text_only = [model.encode(VLSample(None, [("Say hi.", "hi")])) for _ in range(2)]
    model(text_only)
    assert seen == []
    mixed = text_only + [model.encode(VLSample(IMAGES[0], [("Colour?", "red")]))]
    model(mixed)
    assert seen == [1]


def test_sequence_layout_and_answer_only_labels():
    model = tiny_lavin()
    tok = tokenizer()
    samples = [VLSample(IMAGES[0], [("What colour is it?", "red")]), VLSample(None, [("Add 2 and 2.", "4")])]
    encoded = [model.encode(s) for s in samples]
    assert tok.decode(encoded[0].prefix_ids[1:]) == "Image: "
    assert tok.decode(encoded[1].prefix_ids[1:]) == "Image: N/A"
    batch = model.batch_inputs(encoded)
    assert batch["modality"].tolist() == [1, 0]
    image_row = batch["labels"][0]
    start = len(encoded[0].prefix_ids)
    assert (image_row[: start + model.num_visual_tokens] == IGNORE_INDEX).all()
    torch.testing.assert_close(batch["inputs_embeds"][0, start:start + 2], model.visual_tokens([IMAGES[0]])[0])
    answers = [tok.decode(row[row != IGNORE_INDEX]) for row in batch["labels"]]
    assert answers == ["red<|im_end|>", "4<|im_end|>"]
    lengths = batch["attention_mask"].sum(1)
    shorter = int(lengths.argmin())
    assert lengths[shorter] < batch["attention_mask"].shape[1]                  # right-padded
    assert batch["attention_mask"][shorter, : lengths[shorter]].all() and not batch["attention_mask"][shorter, -1]


def test_llm_matches_literal_modality_token_oracle():
    model = tiny_lavin()
    randomize_trainable(model, std=0.1)
    samples = [VLSample(IMAGES[0], [("What colour is it?", "red")]), VLSample(None, [("Add 2 and 2.", "4")])]
    batch = model.batch_inputs([model.encode(s) for s in samples])
    with torch.no_grad():
        fast = model.llm(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"],
                         modality=batch["modality"]).logits
        oracle = oracle_causal_lm_logits(model.llm, attention_mask=batch["attention_mask"],
                                         modality=batch["modality"], inputs_embeds=batch["inputs_embeds"])
    valid = batch["attention_mask"].bool()
    assert relative_error(fast[valid], oracle[valid]) <= 1e-5


def test_kv_cached_generation_equals_full_recompute():
    model = tiny_lavin()
    randomize_trainable(model, std=0.1)
    prompts = ["What colour is the shape?", "Add two and two.", "Describe the picture."]
    images = [IMAGES[0], None, IMAGES[1]]
    answers = model.generate(prompts, images, max_new_tokens=6, min_new_tokens=6)
    assert expected_greedy(model, prompts, images, 6) == answers


def expected_greedy(model, prompts, images, steps):
    """Greedy decoding by recomputing the whole sequence each step (no cache, right-aligned)."""
    from fastmma.lavin.sequence import encode_prompt

    tok = tokenizer()
    encoded = [encode_prompt(tok, p, i, model.config.image_prefix, model.config.no_image_text,
                             model.config.system_prompt)
               for p, i in zip(prompts, images)]
    generated = [[] for _ in prompts]
    with torch.no_grad():
        for _ in range(steps):
            batch = model.batch_inputs(
                [type(s)(s.prefix_ids, s.text_ids + t, s.text_labels + [IGNORE_INDEX] * len(t), s.image)
                 for s, t in zip(encoded, generated)], pad_left=True)
            logits = model.llm(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"],
                               modality=batch["modality"]).logits[:, -1]
            for tokens, token in zip(generated, logits.argmax(-1).tolist()):
                tokens.append(token)
    return [tok.decode(t, skip_special_tokens=True).strip() for t in generated]


def test_generate_checks_its_prompts():
    model = tiny_lavin()
    with pytest.raises(ValueError, match="one image"):
        model.generate(["a", "b"], [None])
    with pytest.raises(TypeError, match="wrap a single prompt as \\[prompt\\]"):
        model.generate("hi")
    with pytest.raises(ValueError, match="prompts is empty"):
        model.generate([])
    with pytest.raises(TypeError, match="those at \\[1\\] are not"):
        model.generate(["a", None])
    with pytest.raises(TypeError, match="images must be a list with one image"):
        model.generate(["a"], IMAGES[0])


def test_an_empty_batch_is_named():
    with pytest.raises(ValueError, match="the batch is empty"):
        tiny_lavin()([])


def test_an_llm_patched_with_another_config_is_refused():
    """save_pretrained records LaVINConfig.llm_adapter: a different patch would save an unloadable pair."""
    llm = fastmma.patch(tiny_llm(), fastmma.MMAConfig(rank=2, groups=2))
    with pytest.raises(ValueError, match="already patched with"):
        LaVIN(llm, tiny_vit(), tokenizer(), LaVINConfig(llm_adapter=fastmma.MMAConfig(rank=4, groups=2)))
    model = LaVIN(llm, tiny_vit(), tokenizer(), LaVINConfig(llm_adapter=fastmma.MMAConfig(rank=2, groups=2)))
    assert model.llm is llm


def test_an_llm_patched_without_a_config_keeps_its_patch_and_reloads(tmp_path):
    adapter = fastmma.MMAConfig(rank=4, groups=2)
    model = LaVIN(fastmma.patch(tiny_llm(), adapter), tiny_vit(), tokenizer())
    assert model.config.llm_adapter == adapter
    randomize_trainable(model)
    model.save_pretrained(tmp_path)
    loaded = LaVIN.from_pretrained(tmp_path, llm=tiny_llm(), vision=tiny_vit(), tokenizer=tokenizer())
    assert loaded.config.llm_adapter == adapter
    for name, param in model.trainable_state().items():
        assert torch.equal(loaded.trainable_state()[name], param), name


def test_a_tokenizer_larger_than_the_llm_vocabulary_is_refused():
    small_vocabulary = tiny_llm()
    small_vocabulary.resize_token_embeddings(len(tokenizer()) - 1)
    with pytest.raises(ValueError, match="the tokenizer has .* tokens but the LLM's embedding has"):
        LaVIN(small_vocabulary, tiny_vit(), tokenizer())


def test_save_and_load_round_trip(tmp_path):
    model = tiny_lavin()
    randomize_trainable(model)
    model.save_pretrained(tmp_path)
    loaded = LaVIN.from_pretrained(tmp_path, llm=tiny_llm(), vision=tiny_vit(), tokenizer=tokenizer())
    for name, param in model.trainable_state().items():
        assert torch.equal(loaded.trainable_state()[name], param), name
    assert set(loaded.trainable_state()) == set(model.trainable_state())
    with pytest.raises(ValueError, match="LaVIN.from_pretrained"):
        fastmma.load_adapters(tiny_llm(), tmp_path)


def test_load_refuses_other_base_models(tmp_path):
    tiny_lavin().save_pretrained(tmp_path)
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from .lavin_helpers import VIT_DIMS

    other_vit = CLIPVisionModel(CLIPVisionConfig(**{**VIT_DIMS, "hidden_size": 48}))
    with pytest.raises(ValueError, match="vision model"):
        LaVIN.from_pretrained(tmp_path, llm=tiny_llm(), vision=other_vit, tokenizer=tokenizer())


@pytest.mark.parametrize("edit, match", [
    (lambda saved: saved.pop("vision_model"), "lacks \\['vision_model'\\]"),
    (lambda saved: saved["config"].update(alpha=2), "LaVINConfig: unknown field\\(s\\) \\['alpha'\\]"),
])
def test_a_damaged_saved_config_is_named(tmp_path, edit, match):
    from fastmma.serialization import ADAPTER_CONFIG

    tiny_lavin().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    edit(saved)
    (tmp_path / ADAPTER_CONFIG).write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=match):
        LaVIN.from_pretrained(tmp_path, llm=tiny_llm(), vision=tiny_vit(), tokenizer=tokenizer())


def test_trainable_parameters_are_only_the_new_ones():
    model = tiny_lavin()
    names = set(model.trainable_state())
    assert names and all(("adapter" in n) or ("fastmma_modality_embedding" in n) for n in names)
    assert any(n.startswith("vision.") for n in names) and any(n.startswith("visual_adapter.") for n in names)


def test_visual_feature_standardization_is_fitted_used_saved_and_loaded(tmp_path):
    model = tiny_lavin(standardize_visual_features=True)
    images = [solid_image(colour) for colour in ((200, 30, 30), (20, 180, 40), (30, 60, 220), (240, 200, 10))]
    assert int(model.visual_adapter.feature_count) == 0                          # identity until fitted
    randomize_trainable(model, seed=3)          # (the statistics are saved tensors too: refitted below)
    assert model.fit_visual_statistics(images, max_images=3) == 3
    pixels = pixel_values(images[:3], model.image_size)
    with torch.no_grad():
        features = cls_features(model.vision, pixels, model.config.visual_every)          # [3, T, D_vit]
        torch.testing.assert_close(model.visual_adapter.feature_mean, features.mean(0))
        torch.testing.assert_close(model.visual_adapter.feature_std, features.std(0))
        standardized = (features - features.mean(0)) / features.std(0)
        expected = model.visual_adapter.up(model.visual_adapter.act(model.visual_adapter.down(standardized)))
        torch.testing.assert_close(model.visual_tokens(images[:3]), expected)
    model.save_pretrained(tmp_path)
    loaded = LaVIN.from_pretrained(tmp_path, llm=tiny_llm(), vision=tiny_vit(), tokenizer=tokenizer())
    assert loaded.config.standardize_visual_features
    for name in ("feature_mean", "feature_std", "feature_count"):
        assert torch.equal(getattr(loaded.visual_adapter, name), getattr(model.visual_adapter, name)), name
    with torch.no_grad():
        torch.testing.assert_close(loaded.visual_tokens(images), model.visual_tokens(images))


def test_training_fits_the_visual_statistics_once_before_the_first_step(tmp_path):
    from fastmma.train import TrainConfig, train

    model = tiny_lavin(standardize_visual_features=True)
    samples = [VLSample(solid_image((40 * i, 100, 200 - 30 * i)), [("What colour?", "blue")], {}) for i in range(4)]
    train(model, samples, TrainConfig(out_dir=str(tmp_path / "run"), steps=1, batch_size=2, checkpoint_every=10))
    assert int(model.visual_adapter.feature_count) == 4
    fitted = model.visual_adapter.feature_mean.clone()
    model.prepare_for_training(samples[:2])                                        # already fitted: kept
    assert torch.equal(model.visual_adapter.feature_mean, fitted)


def test_random_vision_spec_scales_the_position_embeddings():
    from fastmma.lavin.build import build_vision
    from fastmma.patching.clip import vision_transformer

    from .lavin_helpers import VIT_DIMS

    plain = build_vision({"random": VIT_DIMS, "seed": 3})
    scaled = build_vision({"random": VIT_DIMS, "seed": 3, "position_scale": 5.0})
    plain_weight = vision_transformer(plain).embeddings.position_embedding.weight
    torch.testing.assert_close(vision_transformer(scaled).embeddings.position_embedding.weight, 5.0 * plain_weight)
    torch.testing.assert_close(vision_transformer(scaled).embeddings.patch_embedding.weight,
                               vision_transformer(plain).embeddings.patch_embedding.weight)


def test_demo_vit_lets_the_cls_token_see_every_patch():
    """The demo's random ViT must keep its CLS attention spread over the image: with a peaked random
    attention (initializer_factor 10) the CLS token reads ~2-6 of the 17 tokens and counting is lost."""
    import math

    from fastmma.data.shapes import shapes_qa
    from fastmma.lavin.build import DEMO_VISION, build_vision

    vision = build_vision(DEMO_VISION)
    vision.set_attn_implementation("eager")
    size = DEMO_VISION["random"]["image_size"]
    pixels = pixel_values([sample.image for sample in shapes_qa(8, 0, image_size=size)], size)
    with torch.no_grad():
        attentions = vision(pixel_values=pixels, output_attentions=True).attentions   # per block [N, H, T, T]
    tokens = attentions[0].shape[-1]
    for block, attention in enumerate(attentions):
        cls_row = attention[:, :, 0, :]                                            # [N, H, T]
        entropy = -(cls_row * cls_row.clamp_min(1e-12).log()).sum(-1).mean()
        assert math.exp(entropy.item()) > 0.75 * tokens, f"block {block}: the CLS token attends to too few tokens"
    features = cls_features(vision, pixels, 1)                                     # [N, K, D]
    spread = ((features - features.mean(0)).norm(dim=-1) / features.mean(0).norm(dim=-1)).mean()
    assert spread > 0.04, "the CLS states of different images are nearly equal: the encoder shows no content"


@pytest.mark.parametrize("extra", [{"seed": "0"}, {"seed": 1.5}, {"position_scale": "10"},
                                   {"position_scale": float("nan")}])
def test_random_vision_spec_checks_its_seed_and_position_scale(extra):
    from fastmma.lavin.build import check_vision_spec

    spec = {"random": {"hidden_size": 32}}
    check_vision_spec(dict(spec, seed=3, position_scale=2.0))
    with pytest.raises(ValueError, match="\"seed\" must be an integer and \"position_scale\" a finite number"):
        check_vision_spec(dict(spec, **extra))
