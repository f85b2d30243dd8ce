"""MultiWay-Adapter on torchscale's BEiT-3: placement, identity at init, gradient routing, unpatch, save/load."""
import json
import os
import re
import sys

import pytest
import torch

pytest.importorskip("torchscale")

import fastmma  # noqa: E402
from fastmma.mwa import MWAConfig, adapter_parameters  # noqa: E402
from fastmma.mwa.beit3 import TORCHSCALE_INSTALL, BEiT3Dims, build_beit3, torchscale_classes  # noqa: E402
from fastmma.mwa.reference import (LANGUAGE_WAY, VISION_WAY, alignment_enhancer_reference,  # noqa: E402
                                   nke_reference)
from fastmma.serialization import ADAPTER_CONFIG, ADAPTER_WEIGHTS  # noqa: E402

TINY = BEiT3Dims(embed_dim=32, layers=2, heads=4, ffn_dim=48, img_size=16, patch_size=8, vocab_size=30,
                 max_source_positions=16)
VISION_TOKENS = 5                      # CLS + (16 / 8) ** 2 patches
CONFIG = MWAConfig(rank=6, scale=0.5, dropout=0.0, enhancer_rank=7)
INPUT_KINDS = ("image", "text", "joint")


def tiny_beit3(dims=TINY, seed=0):
    torch.manual_seed(seed)
    return build_beit3(dims).eval()


def inputs(kind, seed=3):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 16, 16, generator=generator)
    tokens = torch.randint(0, TINY.vocab_size, (2, 6), generator=generator)
    return {"image": dict(visual_tokens=images), "text": dict(textual_tokens=tokens),
            "joint": dict(visual_tokens=images, textual_tokens=tokens)}[kind]


def encode(model, kind):
    return model(**inputs(kind))["encoder_out"]


def randomize(model, std=0.3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(adapter_parameters(model).items()):
            param.copy_(torch.randn(param.shape, generator=generator) * std)


# --- config -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("rank", 0), ("rank", 2.0), ("scale", 0.0), ("scale", float("nan")),
                                          ("dropout", 1.0), ("enhancer", 1), ("enhancer_rank", -3)])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"MWAConfig.{field}"):
        MWAConfig(**{field: value})


def test_config_enhancer_rank_defaults_to_a_quarter_of_the_host_width():
    assert MWAConfig().resolved_enhancer_rank(1024) == 256
    assert MWAConfig(enhancer_rank=8).resolved_enhancer_rank(1024) == 8
    with pytest.raises(ValueError, match="enhancer_rank"):
        MWAConfig(enhancer=False, enhancer_rank=8)
    with pytest.raises(ValueError, match="unknown field"):
        MWAConfig.from_dict({"rank": 4, "groups": 2})


# --- patching ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_identity_at_init(kind):
    """Bit-exact against the frozen base: on the non-contiguous joint-input views, F.linear sums in a different
    order when its weight requires grad, so a trainable base differs from a frozen one in the last bit."""
    model = tiny_beit3().requires_grad_(False)
    with torch.no_grad():
        base = encode(model, kind)
        fastmma.patch(model, MWAConfig())
        assert torch.equal(encode(model, kind), base)
        assert torch.equal(encode(model.train(), kind), base)      # dropout on a zero branch is still zero


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_every_token_of_every_input_kind_is_adapted(kind):
    model = tiny_beit3()
    with torch.no_grad():
        base = encode(model, kind)
        randomize(fastmma.patch(model, CONFIG))
        changed = (encode(model, kind) - base).abs().amax(dim=-1)                  # [B, L]
    assert bool((changed > 1e-4).all()), f"untouched tokens: {(changed <= 1e-4).nonzero().tolist()}"


@pytest.mark.parametrize("split", (-1, 0, 3))
def test_layer_output_matches_reference(split):
    """out = y + AE(y), y = x + FFN_way(LN_way(x)) + NKE_way(x), x = the FFN block's input."""
    model = fastmma.patch(tiny_beit3(), CONFIG)
    randomize(model)
    layer = model.encoder.layers[1]
    captured = {}
    handle = layer.final_layer_norm.register_forward_pre_hook(lambda _, args: captured.update(x=args[0]))
    x = torch.randn(2, 8, TINY.embed_dim)
    with torch.no_grad():
        out, _ = layer(x, encoder_padding_mask=None, multiway_split_position=split)
        ffn_block_input = captured["x"]
        y = ffn_block_input + layer.ffn(layer.final_layer_norm(ffn_block_input))
        nke = layer.mwa_nke
        y = y + nke_reference(ffn_block_input, split, nke.down_weight, nke.down_bias, nke.up_weight, nke.up_bias,
                              CONFIG.scale)
        enhancer = layer.mwa_enhancer
        expected = alignment_enhancer_reference(y, enhancer.down.weight, enhancer.down.bias, enhancer.up.weight,
                                                enhancer.up.bias)
    handle.remove()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss_on, silent_way", [("text", VISION_WAY), ("vision", LANGUAGE_WAY)])
def test_each_way_learns_only_from_its_own_tokens(loss_on, silent_way):
    """On joint input, a loss on one modality's tokens leaves the last layer's other NKE way at exactly zero
    gradient (earlier layers mix the modalities through attention), while the shared enhancer gets gradient."""
    model = fastmma.patch(tiny_beit3(), CONFIG)
    randomize(model)
    hidden = encode(model, "joint")                                                # [B, 5 + 6, D]
    selected = hidden[:, VISION_TOKENS:] if loss_on == "text" else hidden[:, :VISION_TOKENS]
    (selected ** 2).sum().backward()
    last = model.encoder.layers[-1]
    for name, param in last.mwa_nke.named_parameters():
        assert torch.count_nonzero(param.grad[silent_way]) == 0, name
        assert torch.count_nonzero(param.grad[1 - silent_way]) > 0, name
    for name, param in last.mwa_enhancer.named_parameters():
        assert torch.count_nonzero(param.grad) > 0, name


def test_backbone_is_frozen_and_only_adapters_train():
    model = fastmma.patch(tiny_beit3(), CONFIG)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_parameters(model))
    per_layer = 2 * (2 * 6 * 32 + 6 + 32) + (2 * 7 * 32 + 7 + 32)                  # two NKE ways + the enhancer
    assert sum(p.numel() for p in adapter_parameters(model).values()) == TINY.layers * per_layer
    assert all(p.dtype == torch.float32 for p in adapter_parameters(model).values())


def test_enhancer_can_be_left_out():
    model = fastmma.patch(tiny_beit3(), MWAConfig(rank=4, enhancer=False))
    assert not any("mwa_enhancer" in name for name in adapter_parameters(model))
    with torch.no_grad():
        randomize(model)
        encode(model, "joint")


def test_unpatch_restores_the_base_model_bit_exactly():
    model = tiny_beit3()
    model.text_embed.weight.requires_grad_(False)
    base_state = {name: t.clone() for name, t in model.state_dict().items()}
    with torch.no_grad():
        base = {kind: encode(model, kind) for kind in INPUT_KINDS}
    fastmma.patch(model, CONFIG)
    randomize(model)
    encode(model.train(), "joint").sum().backward()
    fastmma.unpatch(model.eval())
    assert not fastmma.is_patched(model)
    assert model.state_dict().keys() == base_state.keys()
    assert all(torch.equal(model.state_dict()[name], t) for name, t in base_state.items())
    assert not model.text_embed.weight.requires_grad and model.vision_embed.proj.weight.requires_grad
    with torch.no_grad():
        for kind in INPUT_KINDS:
            assert torch.equal(encode(model, kind), base[kind])
    fastmma.patch(model, CONFIG)                                                    # and it can be patched again


def test_merge_explains_why_it_cannot():
    model = fastmma.patch(tiny_beit3(), CONFIG)
    with pytest.raises(TypeError, match="nonlinear"):
        fastmma.merge(model)


def test_patch_checks_the_host():
    with pytest.raises(TypeError, match="BEiT3"):
        fastmma.patch(torch.nn.Linear(4, 4), CONFIG)
    model = fastmma.patch(tiny_beit3(), CONFIG)
    with pytest.raises(RuntimeError, match="already patched"):
        fastmma.patch(model, CONFIG)
    post_ln = build_beit3(TINY)
    post_ln.args.encoder_normalize_before = False
    with pytest.raises(ValueError, match="encoder_normalize_before"):
        fastmma.patch(post_ln, CONFIG)


def test_missing_torchscale_names_the_install_command(monkeypatch):
    assert TORCHSCALE_INSTALL == "pip install --no-deps torchscale==0.3.0 fairscale==0.4.0"
    for name in [name for name in sys.modules if name.startswith("torchscale")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=re.escape(TORCHSCALE_INSTALL)):
        torchscale_classes()


# --- save / load ------------------------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    model = fastmma.patch(tiny_beit3(), CONFIG)
    randomize(model)
    fastmma.save_adapters(model, tmp_path)
    return model, tmp_path


def test_round_trip_into_unpatched_model_is_exact(saved):
    model, directory = saved
    assert sorted(os.listdir(directory)) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    written = json.loads((directory / ADAPTER_CONFIG).read_text())
    assert written["method"] == "mwa" and written["format"] == "fastmma-adapters" and written["format_version"] == 1
    assert written["config"] == CONFIG.to_dict()
    assert written["base_model"] == {"model_type": "beit3", "hidden_size": 32, "num_hidden_layers": 2}
    loaded = fastmma.load_adapters(tiny_beit3(), directory)
    assert loaded._fastmma.config == CONFIG
    for name, param in adapter_parameters(model).items():
        assert torch.equal(adapter_parameters(loaded)[name], param)
    with torch.no_grad():
        for kind in INPUT_KINDS:
            assert torch.equal(encode(loaded, kind), encode(model, kind))


def test_round_trip_into_patched_model(saved):
    model, directory = saved
    target = fastmma.patch(tiny_beit3(), CONFIG)
    fastmma.load_adapters(target, directory)
    for name, param in adapter_parameters(model).items():
        assert torch.equal(adapter_parameters(target)[name], param)


def test_config_mismatch_with_patched_model(saved):
    _, directory = saved
    with pytest.raises(ValueError, match="unpatch"):
        fastmma.load_adapters(fastmma.patch(tiny_beit3(), MWAConfig()), directory)


def test_different_base_width_is_rejected(saved):
    _, directory = saved
    wider = BEiT3Dims(**{**TINY.__dict__, "embed_dim": 48})
    with pytest.raises(ValueError, match="hidden_size=32.*hidden_size=48"):
        fastmma.load_adapters(tiny_beit3(wider), directory)


def test_missing_and_unexpected_keys_leave_the_model_unpatched(saved):
    from safetensors.torch import load_file

    from .helpers import replace_adapter_weights

    _, directory = saved
    tensors = load_file(directory / ADAPTER_WEIGHTS)
    dropped = sorted(tensors)[0]
    tensors["encoder.layers.0.mwa_nke.extra"] = tensors.pop(dropped)
    replace_adapter_weights(directory, tensors)
    target = tiny_beit3()
    with pytest.raises(KeyError, match="missing .*mwa.*unexpected .*extra"):
        fastmma.load_adapters(target, directory)
    assert not fastmma.is_patched(target)


def test_shape_mismatch(saved):
    _, directory = saved
    written = json.loads((directory / ADAPTER_CONFIG).read_text())
    written["config"]["rank"] = 5
    (directory / ADAPTER_CONFIG).write_text(json.dumps(written))
    with pytest.raises(ValueError, match="has shape"):
        fastmma.load_adapters(tiny_beit3(), directory)


def test_truncated_and_pickled_files_are_rejected(saved):
    _, directory = saved
    weights = directory / ADAPTER_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated"):
        fastmma.load_adapters(tiny_beit3(), directory)
    weights.rename(directory / "adapter_model.bin")
    with pytest.raises(FileNotFoundError, match="never pickles"):
        fastmma.load_adapters(tiny_beit3(), directory)


def test_mwa_adapters_do_not_load_into_another_model(saved):
    _, directory = saved
    with pytest.raises(TypeError, match="BEiT3"):
        fastmma.load_adapters(torch.nn.Linear(4, 4), directory)
