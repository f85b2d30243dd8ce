"""save_adapters / load_adapters: only the trainable tensors, as safetensors + JSON. Never unpickles."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_path
from .config import MMAConfig
from .patching.core import adapter_parameters, is_patched, patch, require_patched, unpatch
from .patching.methods import handler_for_model, handler_named

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "fastmma-adapters"
FORMAT_VERSION = 1
WEIGHTS_CHECKSUM = "weights_sha256"


def save_adapters(model: nn.Module, directory: str | Path) -> Path:
    """Write `adapter_model.safetensors` and `adapter_config.json` to `directory`, each atomically."""
    other_method = handler_for_model(model)
    if other_method is not None:
        return other_method.save(model, directory)
    require_patched(model, "save_adapters")
    return write_adapter_files(directory, adapter_parameters(model), "mma", {
        "config": model._fastmma.config.to_dict(),
        "base_model": _base_description(model),
    })


def write_adapter_files(directory: str | Path, parameters: dict[str, torch.Tensor], method: str,
                        description: dict) -> Path:
    """The shared on-disk format of every method: the tensors as safetensors, the rest as JSON.

    Both files are written in full under temporary names before either replaces a saved one, so a failure
    while writing (a value JSON cannot hold, a full disk) leaves the saved pair as it was. The config records
    the weights' SHA-256, so a pair split by a crash between the two renames is refused when loaded.
    """
    directory = Path(directory)
    tensors = {name: p.detach().to("cpu").contiguous() for name, p in parameters.items()}
    with atomic_path(directory / ADAPTER_WEIGHTS) as weights_tmp:
        save_file(tensors, str(weights_tmp), metadata={"format": FORMAT})
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "method": method, **description,
                  WEIGHTS_CHECKSUM: _sha256(weights_tmp)}
        try:
            config_text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        except (TypeError, ValueError) as err:
            raise TypeError(f"the adapter config cannot be saved as JSON ({err}); use plain Python numbers, "
                            f"strings and lists in the config") from err
        with atomic_path(directory / ADAPTER_CONFIG) as config_tmp:
            config_tmp.write_text(config_text)
    return directory


def read_adapter_tensors(directory: Path, saved: dict) -> dict[str, torch.Tensor]:
    """The saved tensors, checked against the SHA-256 their config recorded (configs from before it have none)."""
    path = Path(directory) / ADAPTER_WEIGHTS
    tensors = _read_tensors(path)
    expected = saved.get(WEIGHTS_CHECKSUM)
    if expected is not None and _sha256(path) != expected:
        raise ValueError(f"{path} is not the weights file {ADAPTER_CONFIG} was saved with (its SHA-256 differs): "
                         f"the save was interrupted or the files were mixed up. Save the adapters again")
    return tensors


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_adapters(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load saved adapters into `model`, patching it first (from the saved config) if it is not patched."""
    directory = Path(directory)
    saved = read_adapter_config(directory)
    other_method = handler_named(saved.get("method", "mma"))
    if other_method is not None:
        return other_method.load(model, directory, saved)
    if saved.get("method", "mma") != "mma":
        raise ValueError(f"{directory} holds a {saved['method']!r} model, not MMA adapters for a causal LM; "
                         f"load it with fastmma.LaVIN.from_pretrained")
    require_fields(saved, ("config", "base_model"), directory)
    config = MMAConfig.from_dict(saved["config"])
    _check_base_matches(model, saved["base_model"], directory)
    tensors = read_adapter_tensors(directory, saved)
    patched_here = not is_patched(model)
    if patched_here:
        patch(model, config)
    elif model._fastmma.config != config:
        raise ValueError(f"the adapters in {directory} were saved with {config}, but this model is patched with "
                         f"{model._fastmma.config}; call fastmma.unpatch(model) first, or load into an unpatched model")
    return copy_adapters_or_undo(model, tensors, directory, patched_here)


def copy_adapters_or_undo(model: nn.Module, tensors: dict[str, torch.Tensor], directory: Path,
                          patched_here: bool) -> nn.Module:
    """Copy saved tensors into the model's adapters; if that fails, unpatch a model this load patched."""
    try:
        _copy_into(adapter_parameters(model), tensors, directory)
    except Exception:
        if patched_here:
            unpatch(model)
        raise
    return model


def read_adapter_config(directory: Path) -> dict:
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no {ADAPTER_CONFIG} in {directory}; save adapters with fastmma.save_adapters")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it may be truncated") from err
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fastmma adapter config (expected \"format\": \"{FORMAT}\")")
    if saved.get("method", "mma") not in ("mma", "lavin") and handler_named(saved["method"]) is None:
        raise ValueError(f"{path} holds adapters of method {saved['method']!r}, which this fastmma does not know")
    version = saved.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{path} has format_version {version!r}; it must be an integer (this fastmma writes "
                         f"{FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {saved['format_version']}; this fastmma reads up to "
                         f"{FORMAT_VERSION}: upgrade fastmma")
    return saved


def require_fields(saved: dict, names: tuple[str, ...], directory: Path) -> None:
    missing = [name for name in names if not isinstance(saved.get(name), dict)]
    if missing:
        raise ValueError(f"{Path(directory) / ADAPTER_CONFIG} lacks {missing} (JSON objects); it was not written by "
                         f"fastmma.save_adapters or has been edited. Save the adapters again")


def _base_description(model: nn.Module) -> dict:
    return {"model_type": model.config.model_type, "hidden_size": model.config.hidden_size,
            "num_hidden_layers": model.config.num_hidden_layers}


def _check_base_matches(model: nn.Module, saved_base: dict, directory: Path) -> None:
    current = _base_description(model)
    for key in ("model_type", "hidden_size", "num_hidden_layers"):
        if saved_base.get(key) != current[key]:
            raise ValueError(f"the adapters in {directory} were trained on a base model with {key}="
                             f"{saved_base.get(key)}, but this model has {key}={current[key]}; "
                             f"load them into the base model they were trained on")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a file; it should be the adapters' safetensors file")
    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob("adapter_model.*"))
        hint = f" (found {others}: fastmma reads only safetensors, never pickles)" if others else ""
        raise FileNotFoundError(f"no {ADAPTER_WEIGHTS} in {path.parent}{hint}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); it may be truncated or not "
                         f"safetensors at all. Re-save it with fastmma.save_adapters") from err


def _copy_into(params: dict[str, nn.Parameter], tensors: dict[str, torch.Tensor], directory: Path) -> None:
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise KeyError(f"adapter tensors in {directory} do not match the patched model: "
                       f"missing {_preview(missing)}, unexpected {_preview(unexpected)}")
    for name, param in params.items():
        if tuple(tensors[name].shape) != tuple(param.shape):
            raise ValueError(f"adapter tensor {name!r} in {directory} has shape {tuple(tensors[name].shape)}, "
                             f"the model expects {tuple(param.shape)}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])


def _preview(names: list[str], limit: int = 5) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} in all)"
