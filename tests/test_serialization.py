"""save_adapters / load_adapters: exact round trip, atomic writes, clear errors, no pickles."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

import fastmma
from fastmma.serialization import ADAPTER_CONFIG, ADAPTER_WEIGHTS, write_adapter_files

from .helpers import randomize_adapters, replace_adapter_weights, tiny_causal_lm

CONFIG = fastmma.MMAConfig(rank=4, groups=2, experts=3, targets=("attn", "ffn"))


@pytest.fixture
def saved(tmp_path):
    model = fastmma.patch(tiny_causal_lm("llama"), CONFIG)
    randomize_adapters(model)
    fastmma.save_adapters(model, tmp_path)
    return model, tmp_path


def test_round_trip_into_unpatched_model_is_exact(saved):
    model, directory = saved
    assert sorted(os.listdir(directory)) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    stored = load_file(directory / ADAPTER_WEIGHTS)
    assert set(stored) == set(fastmma.adapter_parameters(model))     # only the trainable tensors
    loaded = fastmma.load_adapters(tiny_causal_lm("llama"), directory)
    assert loaded._fastmma.config == CONFIG
    for name, param in fastmma.adapter_parameters(model).items():
        assert torch.equal(fastmma.adapter_parameters(loaded)[name], param)
    ids = torch.randint(3, 97, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(ids, modality=1).logits, model(ids, modality=1).logits)


def test_round_trip_into_patched_model(saved):
    model, directory = saved
    target = fastmma.patch(tiny_causal_lm("llama"), CONFIG)
    fastmma.load_adapters(target, directory)
    for name, param in fastmma.adapter_parameters(model).items():
        assert torch.equal(fastmma.adapter_parameters(target)[name], param)


def test_config_mismatch_with_patched_model(saved):
    _, directory = saved
    with pytest.raises(ValueError, match="unpatch"):
        fastmma.load_adapters(fastmma.patch(tiny_causal_lm("llama"), fastmma.MMAConfig()), directory)


def test_different_base_width_is_rejected(saved):
    _, directory = saved
    with pytest.raises(ValueError, match="hidden_size=64.*hidden_size=32"):
        fastmma.load_adapters(tiny_causal_lm("llama", hidden_size=32), directory)


def test_missing_and_unexpected_keys(saved):
    _, directory = saved
    tensors = load_file(directory / ADAPTER_WEIGHTS)
    first = sorted(tensors)[0]
    tensors["extra.weight"] = tensors.pop(first)
    replace_adapter_weights(directory, tensors)
    model = tiny_causal_lm("llama")
    with pytest.raises(KeyError, match="missing .*unexpected \\[extra.weight\\]"):
        fastmma.load_adapters(model, directory)
    assert not fastmma.is_patched(model)          # a failed load leaves the model as it was


def test_shape_mismatch(saved):
    _, directory = saved
    tensors = load_file(directory / ADAPTER_WEIGHTS)
    name = sorted(tensors)[0]
    tensors[name] = torch.zeros(*tensors[name].shape[:-1], tensors[name].shape[-1] + 1)
    replace_adapter_weights(directory, tensors)
    with pytest.raises(ValueError, match="has shape"):
        fastmma.load_adapters(tiny_causal_lm("llama"), directory)


def test_truncated_file(saved):
    _, directory = saved
    path = directory / ADAPTER_WEIGHTS
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        fastmma.load_adapters(tiny_causal_lm("llama"), directory)


def test_pickle_file_is_refused_without_unpickling(saved):
    _, directory = saved
    os.remove(directory / ADAPTER_WEIGHTS)
    torch.save({"x": torch.ones(1)}, directory / "adapter_model.bin")
    with pytest.raises(FileNotFoundError, match="never pickles"):
        fastmma.load_adapters(tiny_causal_lm("llama"), directory)
    torch.save({"x": torch.ones(1)}, directory / ADAPTER_WEIGHTS)      # a pickle under the right name
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        fastmma.load_adapters(tiny_causal_lm("llama"), directory)


def test_bad_config_files(saved):
    _, directory = saved
    (directory / ADAPTER_CONFIG).write_text('{"format": "fastmma-adapters", "config": {')
    with pytest.raises(ValueError, match="not valid JSON"):
        fastmma.load_adapters(tiny_causal_lm("llama"), directory)
    (directory / ADAPTER_CONFIG).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a fastmma adapter config"):
        fastmma.load_adapters(tiny_causal_lm("llama"), directory)
    os.remove(directory / ADAPTER_CONFIG)
    with pytest.raises(FileNotFoundError, match=ADAPTER_CONFIG):
        fastmma.load_adapters(tiny_causal_lm("llama"), directory)


def test_interrupted_save_keeps_previous_files(saved, monkeypatch):
    model, directory = saved
    before = {name: (directory / name).read_bytes() for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}
    randomize_adapters(model, seed=9)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("fastmma.serialization.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        fastmma.save_adapters(model, directory)
    assert {name: (directory / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(directory)) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]   # no temporary files left


def test_save_requires_a_patched_model(tmp_path):
    with pytest.raises(RuntimeError, match="not patched"):
        fastmma.save_adapters(tiny_causal_lm("llama"), tmp_path)


def test_weights_from_another_save_are_refused(saved, tmp_path_factory):
    """A pair split by a crash between the two renames: the config's checksum does not match the weights."""
    model, directory = saved
    other = tmp_path_factory.mktemp("other")
    randomize_adapters(model, seed=5)
    fastmma.save_adapters(model, other)
    (directory / ADAPTER_WEIGHTS).write_bytes((other / ADAPTER_WEIGHTS).read_bytes())
    with pytest.raises(ValueError, match="SHA-256 differs"):
        fastmma.load_adapters(tiny_causal_lm("llama"), directory)


def test_a_config_json_cannot_hold_leaves_the_saved_pair_as_it_was(saved):
    model, directory = saved
    before = {name: (directory / name).read_bytes() for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}
    with pytest.raises(TypeError, match="cannot be saved as JSON"):
        write_adapter_files(directory, fastmma.adapter_parameters(model), "mma", {"config": {"scale": object()}})
    assert {name: (directory / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(directory)) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]


def _edit_config(directory, **changes):
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config))


@pytest.mark.parametrize("changes,match", [
    ({"config": None}, "lacks \\['config'\\]"),
    ({"base_model": None}, "lacks \\['base_model'\\]"),
    ({"format_version": "1"}, "format_version '1'; it must be an integer"),
])
def test_damaged_config_fields_are_named(saved, changes, match):
    _, directory = saved
    _edit_config(directory, **changes)
    with pytest.raises(ValueError, match=match):
        fastmma.load_adapters(tiny_causal_lm("llama"), directory)


def test_adapters_of_another_model_type_are_refused(saved):
    _, directory = saved
    with pytest.raises(ValueError, match="model_type=llama, but this model has model_type=qwen2"):
        fastmma.load_adapters(tiny_causal_lm("qwen2"), directory)


def test_a_folder_in_place_of_the_weights_is_named(saved):
    _, directory = saved
    os.remove(directory / ADAPTER_WEIGHTS)
    (directory / ADAPTER_WEIGHTS).mkdir()
    with pytest.raises(ValueError, match="is not a file"):
        fastmma.load_adapters(tiny_causal_lm("llama"), directory)
