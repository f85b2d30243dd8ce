"""Training checkpoints: trainable tensors, optimizer state and progress, written so a crash never
loses the last complete checkpoint.

Layout of out_dir:
    checkpoint-000050/       adapter_model.safetensors, adapter_config.json (the model's save_pretrained),
                             optimizer.safetensors (moment tensors), trainer_state.json (step, losses, groups)
    latest.json              {"checkpoint": "checkpoint-000050"}, replaced atomically after a checkpoint is complete
    metrics.json, loss.png   the log so far
A checkpoint folder is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .atomic import write_json_atomic
from .plotting import save_loss_curve

LATEST = "latest.json"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.safetensors"


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
        final = out_dir / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
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
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{pointer} is unreadable ({err}); delete it to start over, or fix it to name a "
                         f"checkpoint folder") from err
    path = Path(out_dir) / name
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{pointer} names {name}, which is incomplete or missing")
    return path


def load_checkpoint(path: Path, model, optimizer) -> TrainState:
    from .serialization import ADAPTER_WEIGHTS, _copy_into, _read_tensors

    saved = json.loads((path / TRAINER_STATE).read_text())
    _copy_into(model.trainable_state(), _read_tensors(path / ADAPTER_WEIGHTS), path)
    _load_optimizer(optimizer, load_file(str(path / OPTIMIZER_STATE)), saved["param_groups"])
    return TrainState(step=saved["step"], losses=saved["losses"], log=saved["log"])


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


