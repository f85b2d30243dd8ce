"""Attention implementation chosen by fastmma.patch (flash-attn on CUDA when installed), and checkpoint offload."""
import warnings

import pytest
import torch

import fastmma
from fastmma import TrainConfig
from fastmma import checkpointing as ckpt
from fastmma.patching import attention, cpu_attention

from .helpers import tiny_causal_lm


@pytest.mark.parametrize("requested,device,dtype,installed,current,expected", [
    ("auto", "cuda", torch.bfloat16, True, "sdpa", "flash_attention_2"),
    ("auto", "cuda", torch.float16, True, "eager", "flash_attention_2"),
    ("auto", "cuda", torch.bfloat16, False, "sdpa", "sdpa"),        # flash-attn not installed
    ("auto", "cuda", torch.float32, True, "sdpa", "sdpa"),          # flash-attn needs fp16 / bf16
    ("auto", "cpu", torch.bfloat16, True, "eager", "fastmma"),
    ("keep", "cuda", torch.bfloat16, True, "eager", "eager"),
    ("eager", "cuda", torch.bfloat16, True, "sdpa", "eager"),
])
def test_choice(monkeypatch, requested, device, dtype, installed, current, expected):
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: installed)
    monkeypatch.setattr(attention.cpu_attention, "available", lambda: True)
    assert attention.choose_attn_implementation(requested, device, dtype, current) == expected


def test_auto_on_cpu_without_the_cpp_kernels_is_sdpa(monkeypatch):
    monkeypatch.setattr(attention.cpu_attention, "available", lambda: False)
    assert attention.choose_attn_implementation("auto", "cpu", torch.float32, "eager") == "sdpa"


def _fake_cuda_model(monkeypatch, refuse=False):
    """A tiny model that fastmma sees as a bf16 CUDA model with flash-attn installed; records what is set."""
    model = tiny_causal_lm("llama")
    calls = []

    def set_attn_implementation(name):
        calls.append(name)
        if refuse and name == "flash_attention_2":
            raise ImportError("FlashAttention2 is not available on this GPU")
        model.config._attn_implementation_internal = name

    monkeypatch.setattr(attention, "flash_attn_installed", lambda: True)
    monkeypatch.setattr(attention, "placement", lambda m: ("cuda", torch.bfloat16))
    monkeypatch.setattr(model, "set_attn_implementation", set_attn_implementation, raising=False)
    return model, calls


def test_patch_picks_flash_attention_on_cuda_and_unpatch_restores(monkeypatch):
    model, calls = _fake_cuda_model(monkeypatch)
    assert model.config._attn_implementation == "sdpa"
    fastmma.patch(model)
    assert calls == ["flash_attention_2"] and model.config._attn_implementation == "flash_attention_2"
    fastmma.unpatch(model)
    assert calls == ["flash_attention_2", "sdpa"] and model.config._attn_implementation == "sdpa"


def test_auto_falls_back_to_sdpa_when_transformers_refuses(monkeypatch):
    model, calls = _fake_cuda_model(monkeypatch, refuse=True)
    with pytest.warns(RuntimeWarning, match="using SDPA"):
        fastmma.patch(model)
    assert calls == ["flash_attention_2"] and model.config._attn_implementation == "sdpa"
    model2, _ = _fake_cuda_model(monkeypatch, refuse=True)
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2' cannot be used"):
        fastmma.patch(model2, fastmma.MMAConfig(attn_implementation="flash_attention_2"))


def test_on_cpu_an_eager_model_gets_the_cpu_attention_and_keep_keeps_it():
    model = tiny_causal_lm("llama", attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    fastmma.patch(model)
    assert model.config._attn_implementation == ("fastmma" if cpu_attention.available() else "sdpa")
    fastmma.unpatch(model)
    assert model.config._attn_implementation == "eager"
    fastmma.patch(model, fastmma.MMAConfig(attn_implementation="keep"))
    assert model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="attn_implementation"):
        fastmma.MMAConfig(attn_implementation="flash")


def test_offload_needs_checkpointing():
    with pytest.raises(ValueError, match="offload_checkpoints=True .* set gradient_checkpointing=True"):
        TrainConfig(offload_checkpoints=True)
    assert TrainConfig(gradient_checkpointing=True, offload_checkpoints=True).offload_checkpoints


def test_offload_is_a_no_op_on_cpu_and_passed_on_for_cuda(monkeypatch):
    seen = []
    model = fastmma.patch(tiny_causal_lm("llama"), fastmma.MMAConfig(dropout=0.0)).train()
    original = type(model).activation_checkpointing_enable

    def spy(self, activation_checkpointing_kwargs=None, every_n_layers=1, offload=False):
        seen.append(offload)
        return original(self, activation_checkpointing_kwargs=activation_checkpointing_kwargs, offload=offload)

    monkeypatch.setattr(type(model), "activation_checkpointing_enable", spy)
    ids = torch.randint(3, 97, (2, 10), generator=torch.Generator().manual_seed(0))
    grads = []
    for offload in (False, True):
        ckpt.enable_checkpointing(model, offload=offload)
        model.zero_grad()
        model(ids, labels=ids, modality=0).loss.backward()
        grads.append({n: p.grad.clone() for n, p in fastmma.adapter_parameters(model).items()})
        ckpt.disable_checkpointing(model)
    assert seen == [False, False]                        # CPU: nothing to offload
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=0)
    monkeypatch.setattr(ckpt, "on_accelerator", lambda m: True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monkeypatch.setattr(type(model), "activation_checkpointing_enable",
                            lambda self, activation_checkpointing_kwargs=None, offload=False: seen.append(offload))
        ckpt.enable_checkpointing(model, offload=True)
    assert seen == [False, False, True]


def test_trainer_passes_offload_and_every_n_layers_on(monkeypatch):
    import importlib

    train_module = importlib.import_module("fastmma.train")      # `fastmma.train` is also the function

    calls = []
    monkeypatch.setattr(train_module, "enable_checkpointing",
                        lambda model, offload=False, every_n_layers=1: calls.append((offload, every_n_layers)))

    class Holder:
        llm = object()

    train_module._set_checkpointing(Holder(), True, True)
    train_module._set_checkpointing(Holder(), True, False, 3)
    assert calls == [(True, 1), (False, 3)]
    with pytest.raises(ValueError, match="checkpoint_every_n_layers"):
        fastmma.TrainConfig(gradient_checkpointing=True, checkpoint_every_n_layers=0)


def test_every_n_layers_without_transformers_support(monkeypatch):
    """transformers releases whose activation_checkpointing_enable has no `every_n_layers`: the same layers."""
    model = tiny_causal_lm("llama", num_hidden_layers=5).train()
    plain_enable = type(model).activation_checkpointing_enable

    def enable_without_every_n(self, activation_checkpointing_kwargs=None, offload=False):
        return plain_enable(self, activation_checkpointing_kwargs, offload=offload)

    monkeypatch.setattr(type(model), "activation_checkpointing_enable", enable_without_every_n)
    ckpt.enable_checkpointing(model, every_n_layers=2)
    assert ckpt.checkpointed_layers(model) == [0, 2, 4]
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="every_n_layers must be a positive integer"):
            ckpt.enable_checkpointing(model, every_n_layers=bad)
