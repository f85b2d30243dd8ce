"""A PEFT-style summary of trainable parameters."""
from __future__ import annotations

from torch import nn


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared Parameter counted once."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module (a patched model or a LaVIN), got {type(model).__name__}")
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def trainable_summary(model: nn.Module) -> str:
    trainable, total = trainable_parameters(model)
    percent = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {percent:.4f}"


def print_trainable_parameters(model: nn.Module) -> None:
    print(trainable_summary(model))
