"""LaVIN's optimisation recipe: AdamW (betas 0.9/0.95), weight decay 0.02 except biases and 1-D
tensors, learning rate 9e-3 x batch/256, linear warm-up then a per-iteration half-cycle cosine."""
from __future__ import annotations

import math

import torch
from torch import nn

LAVIN_BASE_LR = 9e-3
LAVIN_BASE_BATCH = 256


def lavin_learning_rate(batch_size: int) -> float:
    return LAVIN_BASE_LR * batch_size / LAVIN_BASE_BATCH


def parameter_groups(model: nn.Module, weight_decay: float = 0.02) -> list[dict]:
    """Trainable parameters split into a decayed group (matrices) and an undecayed one (biases, 1-D)."""
    return named_parameter_groups(model.named_parameters(), weight_decay)


def named_parameter_groups(named_parameters, weight_decay: float = 0.02) -> list[dict]:
    """`parameter_groups` over (name, parameter) pairs; those without requires_grad are left out."""
    decay, no_decay = [], []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        (no_decay if param.dim() < 2 or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.02,
                    betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    groups = parameter_groups(model, weight_decay)
    if not any(group["params"] for group in groups):
        raise ValueError("the model has no trainable parameters; patch it with fastmma.patch first")
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, total_steps, warmup_steps))
