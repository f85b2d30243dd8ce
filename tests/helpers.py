"""Shared test utilities: tiny random models, adapter randomisation, tolerance rule."""
from __future__ import annotations

import copy
import os

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

import fastmma

TINY_DIMS = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
                 eos_token_id=2)

# Where the Triton kernel tests run: "cpu" (Triton's interpreter, the default) or "cuda" (tests/conftest.py).
TEST_DEVICE = torch.device(os.environ.get("FASTMMA_TEST_DEVICE", "cpu"))

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}


def tiny_causal_lm(family: str = "llama", dtype=torch.float32, seed: int = 0, **overrides):
    config_class, model_class = FAMILIES[family]
    torch.manual_seed(seed)
    config = config_class(**{**TINY_DIMS, **overrides})
    return model_class(config).to(dtype).eval()


def patched_pair(switch: str, family: str = "llama", dtype=torch.float32, **config):
    """Two patched copies of one 3-layer tiny model with the same random adapters, in training mode:
    MMAConfig field `switch` False in the first, True in the second (other fields from `config`)."""
    base = tiny_causal_lm(family, dtype=dtype, num_hidden_layers=3)
    models = [fastmma.patch(copy.deepcopy(base), fastmma.MMAConfig(**{switch: flag}, **config)) for flag in (False, True)]
    for model in models:
        randomize_adapters(model, std=0.05)
        model.train()
    return models


def randomize_adapters(model, std: float = 0.2, seed: int = 1) -> None:
    """Give every fastmma parameter random values, so no test passes because something is zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(fastmma.adapter_parameters(model).items()):
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.copy_((noise * std).to(param.dtype))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return float((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def assert_close_to_reference(fast, plain, exact, *, multiple: float = 2.0, floor: float = 1e-6, what: str = ""):
    """The fast path's error vs the fp64 result must be within `multiple` x plain PyTorch's error (+ a floor)."""
    fast_error = (fast.double() - exact.double()).abs().max().item()
    plain_error = (plain.double() - exact.double()).abs().max().item()
    scale = exact.double().abs().max().item()
    bound = multiple * plain_error + floor * max(scale, 1.0)
    assert fast_error <= bound, f"{what}: error {fast_error:.3e} > {multiple} x plain {plain_error:.3e} + floor"


def replace_adapter_weights(directory, tensors) -> None:
    """Write other adapter tensors into a saved pair and drop the config's checksum of the weights (as a
    hand-made pair would have), so that loading reaches the checks of the tensors themselves."""
    import json

    from safetensors.torch import save_file

    from fastmma.serialization import ADAPTER_CONFIG, ADAPTER_WEIGHTS, WEIGHTS_CHECKSUM

    save_file(tensors, str(directory / ADAPTER_WEIGHTS))
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    del config[WEIGHTS_CHECKSUM]
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config))


def assert_same_bits_with_one_and_two_threads(run) -> None:
    """run() -> a sequence of tensors: the same bits whether torch runs on one thread or two."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(threads)
    assert len(one) == len(two)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def loss_and_grads_from_embeddings(model, ids, labels, modality, seed=0, autocast=False, **kwargs):
    """(loss, {adapter parameter name and "inputs_embeds": gradient}) of one training forward + backward
    from input embeddings that require grad, so the gradient reaches the input too."""
    model.zero_grad(set_to_none=True)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(inputs_embeds=embeds, labels=labels, modality=modality, **kwargs).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in fastmma.adapter_parameters(model).items()}
    grads["inputs_embeds"] = embeds.grad.clone()
    return loss.detach(), grads


def ids_and_labels(seed: int, batch: int = 3, length: int = 13, prompt: int = 4):
    """Random token ids [batch, length] of the tiny models' vocabulary and labels with the first `prompt`
    positions ignored (-100)."""
    ids = torch.randint(3, 97, (batch, length), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[:, :prompt] = -100
    return ids, labels
