"""LaVIN.save_pretrained / from_pretrained: only the trainable tensors, safetensors + JSON, atomic."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..serialization import _copy_into, read_adapter_config, read_adapter_tensors, require_fields, write_adapter_files
from .config import LaVINConfig

METHOD = "lavin"


def save_lavin(model, directory: str | Path) -> Path:
    return write_adapter_files(directory, model.trainable_state(), METHOD, {
        "config": model.config.to_dict(),
        "base_model": _describe(model.llm),
        "vision_model": _describe(model.vision),
        "model_spec": model.model_spec,
    })


def load_lavin(directory: str | Path, llm: nn.Module, vision: nn.Module, tokenizer):
    from .model import LaVIN

    directory = Path(directory)
    saved = read_adapter_config(directory)
    if saved.get("method") != METHOD:
        raise ValueError(f"{directory} holds {saved.get('method', 'mma')!r} adapters, not a LaVIN model; "
                         f"load it with fastmma.load_adapters")
    require_fields(saved, ("config", "base_model", "vision_model"), directory)
    for key, module in (("base_model", llm), ("vision_model", vision)):
        if saved[key] != _describe(module):
            raise ValueError(f"{directory} was trained with a {key.replace('_', ' ')} {saved[key]}, but the one "
                             f"given is {_describe(module)}; pass the models it was trained on")
    tensors = read_adapter_tensors(directory, saved)
    model = LaVIN(llm, vision, tokenizer, LaVINConfig.from_dict(saved["config"]))
    model.model_spec = saved.get("model_spec")
    _copy_into(model.trainable_state(), tensors, directory)
    return model


def saved_model_spec(directory: str | Path) -> dict:
    """The spec of the frozen models a saved LaVIN was trained on (see fastmma.lavin.build)."""
    saved = read_adapter_config(Path(directory))
    if saved.get("method") != METHOD or not saved.get("model_spec"):
        raise ValueError(f"{directory} does not record which models it was trained on; load it in Python with "
                         f"LaVIN.from_pretrained(directory, llm=..., vision=..., tokenizer=...)")
    return saved["model_spec"]


def _describe(module: nn.Module) -> dict:
    config = module.config
    return {"model_type": config.model_type, "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers}


