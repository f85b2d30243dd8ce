"""Tiny LaVIN models for tests: a random 2-layer Llama with SmolLM2's tokenizer and a random CLIP ViT."""
from __future__ import annotations

import functools

import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

import fastmma
from fastmma.lavin import LaVIN, LaVINConfig

VIT_DIMS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=32,
                patch_size=8)


@functools.lru_cache(maxsize=1)
def tokenizer():
    from transformers import AutoTokenizer

    from fastmma.models import DEFAULT_GGUF_FILE, default_llm_dir

    return AutoTokenizer.from_pretrained(default_llm_dir(), gguf_file=DEFAULT_GGUF_FILE, local_files_only=True)


def tiny_llm(seed: int = 0, tok=None):
    tok = tok if tok is not None else tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(config).eval()


def tiny_vit(seed: int = 0):
    torch.manual_seed(seed)
    return CLIPVisionModel(CLIPVisionConfig(**VIT_DIMS)).eval()


def tiny_lavin(seed: int = 0, dropout: float = 0.0, tok=None, **config_overrides) -> LaVIN:
    """tok: a tokenizer to use instead of SmolLM2's from its GGUF file (which takes seconds to load)."""
    tok = tok if tok is not None else tokenizer()
    adapter = fastmma.MMAConfig(rank=4, groups=2, dropout=dropout)
    config = LaVINConfig(llm_adapter=adapter, vision_adapter=adapter, visual_every=2, visual_hidden=16,
                         **config_overrides)
    llm, vit = tiny_llm(seed, tok), tiny_vit(seed)
    torch.manual_seed(seed + 1)
    return LaVIN(llm, vit, tok, config)


def randomize_trainable(model, std: float = 0.2, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.trainable_state().items()):
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def solid_image(colour, size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def striped_image(seed: int, size: int = 32) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size, size, 3, generator=generator) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, mode="RGB")
