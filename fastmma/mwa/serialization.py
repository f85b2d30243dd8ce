"""Save / load MultiWay-Adapter weights: safetensors + JSON, written atomically, never unpickled."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..serialization import copy_adapters_or_undo, read_adapter_tensors, write_adapter_files
from .beit3 import beit3_description, check_beit3_host
from .config import MWAConfig
from .patching import METHOD, adapter_parameters, patch, require_mwa


def save(model: nn.Module, directory: str | Path) -> Path:
    """Write `adapter_model.safetensors` and `adapter_config.json` to `directory`, each atomically."""
    state = require_mwa(model, "save_adapters")
    return write_adapter_files(directory, adapter_parameters(model), METHOD, {
        "config": state.config.to_dict(),
        "base_model": beit3_description(model),
    })


def load(model: nn.Module, directory: str | Path, saved: dict) -> nn.Module:
    """Load saved MWA weights into `model`, patching it first (from the saved config) if it is not patched."""
    directory = Path(directory)
    config = MWAConfig.from_dict(saved["config"])
    check_beit3_host(model)
    _check_base_matches(model, saved.get("base_model", {}), directory)
    tensors = read_adapter_tensors(directory, saved)
    patched_here = getattr(model, "_fastmma", None) is None
    if patched_here:
        patch(model, config)
    else:
        _check_patched_with(model, config, directory)
    return copy_adapters_or_undo(model, tensors, directory, patched_here)


def _check_base_matches(model: nn.Module, saved_base: dict, directory: Path) -> None:
    current = beit3_description(model)
    for key in ("model_type", "hidden_size", "num_hidden_layers"):
        if saved_base.get(key) != current[key]:
            raise ValueError(f"the MWA adapters in {directory} were trained on a base model with {key}="
                             f"{saved_base.get(key)}, but this model has {key}={current[key]}; "
                             f"load them into the BEiT-3 they were trained on")


def _check_patched_with(model: nn.Module, config: MWAConfig, directory: Path) -> None:
    state = require_mwa(model, "load_adapters")
    if state.config != config:
        raise ValueError(f"the adapters in {directory} were saved with {config}, but this model is patched with "
                         f"{state.config}; call fastmma.unpatch(model) first, or load into an unpatched model")
