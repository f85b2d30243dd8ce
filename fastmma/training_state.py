"""Training checkpoints: trainable tensors, optimizer state and progress, written so a crash never
loses the last complete checkpoint.

Layout of out_dir:
    checkpoint-000050/       adapter_model.safetensors, adapter_config.json (the model's save_pretrained),
                             optimizer.safetensors (moment tensors), trainer_state.json (step, losses, groups)
    latest.json              {"checkpoint": "checkpoint-000050"}, replaced atomically after a checkpoint is complete
    metrics.json, loss.png   the log so far
A checkpoint folder is written under a temporary name and renamed when complete; a folder of the same
name is moved aside first and deleted only once the new one is in place.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import write_json_atomic
from .plotting import save_loss_curve

LATEST = "latest.json"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.safetensors"
STATE_FIELDS = {"step": int, "losses": list, "log": list, "param_groups": list, "config": dict}


@dataclass
class TrainState:
    step: int
    losses: list[float]
    log: list[dict]


def save_checkpoint(out_dir: Path, model, optimizer, state: TrainState, config, skipped: int, keep: int) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"checkpoint-{state.step:06d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    try:
        model.save_pretrained(staging)
        tensors, groups = _optimizer_tensors(optimizer)
        save_file(tensors, str(staging / OPTIMIZER_STATE))
        write_json_atomic(staging / TRAINER_STATE, {"step": state.step, "losses": state.losses, "log": state.log,
                                                    "param_groups": groups, "config": config.to_dict(),
                                                    "skipped_samples": skipped})
        _replace_folder(staging, out_dir / name)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    write_json_atomic(out_dir / LATEST, {"checkpoint": name})
    write_json_atomic(out_dir / "metrics.json", {"step": state.step, "log": state.log, "skipped_samples": skipped})
    save_loss_curve(state.losses, out_dir / "loss.png")
    _prune(out_dir, keep, current=name)
    return out_dir / name


def latest_checkpoint(out_dir: Path) -> Path | None:
    pointer = Path(out_dir) / LATEST
    if not pointer.is_file():
        return None
    name = _checkpoint_name(pointer)
    path = Path(out_dir) / name
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(_damaged(pointer, f"names {name}, which is incomplete or missing"))
    return path


def read_trainer_state(path: Path) -> dict:
    """The checkpoint's trainer_state.json, checked to hold what resuming needs (its "config": the TrainConfig)."""
    file = Path(path) / TRAINER_STATE
    try:
        saved = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(_damaged(file, f"is unreadable ({err})")) from err
    if not isinstance(saved, dict):
        raise ValueError(_damaged(file, f"holds {type(saved).__name__}, not a JSON object"))
    wrong = [name for name, kind in STATE_FIELDS.items() if not isinstance(saved.get(name), kind)]
    if wrong:
        raise ValueError(_damaged(file, f"lacks the field(s) {wrong} (or they have the wrong type)"))
    return saved


def load_checkpoint(path: Path, model, optimizer) -> TrainState:
    from .serialization import ADAPTER_WEIGHTS, _copy_into

    saved = read_trainer_state(path)
    _copy_into(model.trainable_state(), _read_checkpoint_tensors(path / ADAPTER_WEIGHTS), path)
    optimizer_file = path / OPTIMIZER_STATE
    optimizer_tensors = _read_checkpoint_tensors(optimizer_file)
    try:
        _load_optimizer(optimizer, optimizer_tensors, saved["param_groups"])
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(_damaged(optimizer_file, f"does not fit this optimizer ({err})")) from err
    return TrainState(step=saved["step"], losses=saved["losses"], log=saved["log"])


def _checkpoint_name(pointer: Path) -> str:
    try:
        pointed = json.loads(pointer.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(_damaged(pointer, f"is unreadable ({err})")) from err
    name = pointed.get("checkpoint") if isinstance(pointed, dict) else None
    if not isinstance(name, str) or not name.startswith("checkpoint-") or Path(name).name != name:
        raise ValueError(_damaged(pointer, f'is unreadable: it must hold {{"checkpoint": "checkpoint-NNNNNN"}}, '
                                           f"not {pointed!r}"))
    return name


def _read_checkpoint_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(_damaged(file, f"is missing or not a readable safetensors file ({err})")) from err


def _damaged(file: Path, problem: str) -> str:
    return (f"{file} {problem}; the checkpoint cannot be resumed. Start over with --no-resume (resume=False), or "
            f"remove the damaged checkpoint (and point {LATEST} at an earlier checkpoint-* folder, if any)")


def _replace_folder(new: Path, final: Path) -> None:
    """Rename `new` to `final`. An existing `final` is moved aside, put back if the rename fails, and deleted
    only once `new` is in place: a crash never leaves the name without a complete folder for longer than
    between two renames."""
    if not final.exists():
        os.replace(new, final)
        return
    aside = final.with_name(f".{final.name}.replaced")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(final, aside)
    try:
        os.replace(new, final)
    except BaseException:
        os.replace(aside, final)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state_dict = optimizer.state_dict()
    tensors = {f"{index}.{key}": value.detach().cpu().contiguous()
               for index, values in state_dict["state"].items() for key, value in values.items()
               if isinstance(value, torch.Tensor)}
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()}
              for group in state_dict["param_groups"]]
    return tensors, groups


def _load_optimizer(optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _prune(out_dir: Path, keep: int, current: str) -> None:
    checkpoints = sorted(p for p in out_dir.glob("checkpoint-*") if p.is_dir())
    for old in checkpoints[:-max(1, keep)]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


