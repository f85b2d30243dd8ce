"""A minimal adapter-training loop: progress bar with loss and tokens/s, loss history."""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm


def train_steps(model: nn.Module, next_batch: Callable[[int], dict], optimizer, scheduler, steps: int,
                modality=0, max_grad_norm: float | None = 1.0, desc: str = "train") -> list[float]:
    """Run `steps` optimizer steps; `next_batch(step)` returns model inputs with `labels`. Returns losses."""
    model.train()
    losses = []
    trainable = [p for p in model.parameters() if p.requires_grad]
    progress = tqdm(range(steps), desc=desc, dynamic_ncols=True)
    for step in progress:
        batch = next_batch(step)
        started = time.perf_counter()
        loss = model(**batch, modality=modality).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step}; lower the learning rate")
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{tokens / (time.perf_counter() - started):.0f}")
    model.eval()
    return losses


def cycle_batches(batches: list[dict]) -> Callable[[int], dict]:
    return lambda step: batches[step % len(batches)]


