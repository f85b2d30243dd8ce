"""Training LaVIN on instruction data: LaVIN's recipe, gradient accumulation, mixed precision,
atomic periodic checkpoints and exact resume.

Exactness of resume: the batch of step s is a pure function of (seed, s) (a per-epoch
permutation), dropout is seeded per step, and a checkpoint holds the trainable tensors and
the optimizer state; so a resumed run's loss curve equals the uninterrupted one.

Under torchrun (after fastmma.distributed.init_distributed()), each of the N ranks runs its
contiguous 1/N of every global batch in DistributedDataParallel. Each rank's loss is its
samples' summed answer-token losses over the *global* batch's answer-token count, times N
(DDP averages gradients over ranks), so the all-reduced gradient is the single-process
gradient of the same global batch. Rank 0 alone shows progress and writes checkpoints and
metrics; every rank resumes from them. Dropout is seeded per (step, rank).
"""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .checks import (check_fields, is_bool, is_int, is_number, non_negative_int, non_negative_number, positive_int,
                     positive_number)
from .checkpointing import disable_checkpointing, enable_checkpointing
from .data.samples import VLSample
from .lavin.sequence import EncodedSample
from .optim import build_optimizer, lavin_learning_rate, warmup_cosine_factor
from .training_state import (TrainState, latest_checkpoint, load_checkpoint, read_trainer_state,
                             save_checkpoint)

PRECISIONS = ("fp32", "bf16", "fp16")

# TrainConfig fields a resumed run may change, because they do not change what training computes: where
# files go and how often (out_dir, checkpoint_every, keep_checkpoints); what to do with an unusable sample
# (on_bad_sample: a saved run with "error" met none, and "error" after "skip" stops at one instead of
# training on other data); and memory/speed settings (micro_batch_size regroups the same gradient sum, up
# to float rounding; activation checkpointing recomputes the same values). Every other field must match
# the checkpoint's, including any field added later.
RESUMABLE_CHANGES = frozenset({"out_dir", "checkpoint_every", "keep_checkpoints", "on_bad_sample",
                               "micro_batch_size", "gradient_checkpointing", "checkpoint_every_n_layers",
                               "offload_checkpoints"})

def _betas(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(is_number(b) and 0 <= b < 1 for b in value)


# field: (test of a valid value, what the value must be, whether None is allowed: it picks a default)
FIELD_RULES = {
    "steps": (positive_int, "a positive integer (or None: `epochs` passes over the data)", True),
    "epochs": (positive_number, "a positive number", False),
    "batch_size": (positive_int, "a positive integer", False),
    "micro_batch_size": (positive_int, "a positive integer that divides batch_size (or None: batch_size)", True),
    "lr": (positive_number, "a positive number (or None: 9e-3 x batch_size / 256)", True),
    "warmup_steps": (non_negative_int, "an integer >= 0 (or None: 10% of the steps)", True),
    "weight_decay": (non_negative_number, "a number >= 0", False),
    "betas": (_betas, "two numbers in [0, 1), e.g. [0.9, 0.95]", False),
    "max_grad_norm": (positive_number, "a positive number (or None: no clipping)", True),
    "gradient_checkpointing": (is_bool, "true or false", False),
    "checkpoint_every_n_layers": (positive_int, "a positive integer (1 = every layer)", False),
    "offload_checkpoints": (is_bool, "true or false", False),
    "checkpoint_every": (positive_int, "a positive integer", False),
    "keep_checkpoints": (positive_int, "a positive integer", False),
    "max_length": (positive_int, "a positive integer", False),
    "seed": (is_int, "an integer", False),
}


@dataclass
class TrainConfig:
    """steps: optimizer steps (default: `epochs` passes over the data).
    batch_size: samples per optimizer step (over all ranks under torchrun; a multiple of the number of ranks);
    micro_batch_size: samples per forward on one rank (accumulation).
    lr: None -> LaVIN's 9e-3 x batch_size / 256. warmup_steps: None -> 10% of the steps (LaVIN: 2 of 20 epochs).
    precision: fp32 | bf16 (autocast) | fp16 (CUDA only, with loss scaling).
    on_bad_sample: "error" stops at the first sample that cannot be used; "skip" drops it and reports the count.
    Resuming from a checkpoint in out_dir needs its values of every field but those in RESUMABLE_CHANGES.
    """

    out_dir: str = "runs/lavin"
    steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 8
    micro_batch_size: int | None = None
    lr: float | None = None
    warmup_steps: int | None = None
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float | None = None
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    checkpoint_every_n_layers: int = 1     # with gradient_checkpointing: recompute layers 0, n, 2n, ... only
    offload_checkpoints: bool = False     # keep checkpointed layer inputs in CPU memory (CUDA; a no-op on CPU)
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    max_length: int = 512
    on_bad_sample: str = "error"
    seed: int = 0

    def __post_init__(self):
        check_fields(self, FIELD_RULES)
        self.betas = tuple(self.betas)
        micro = self.micro_batch_size or self.batch_size
        if self.batch_size % micro:
            raise ValueError(f"TrainConfig.batch_size={self.batch_size} must be a positive multiple of "
                             f"micro_batch_size={micro}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision={self.precision!r}; choose one of {PRECISIONS}")
        if self.on_bad_sample not in ("error", "skip"):
            raise ValueError(f"TrainConfig.on_bad_sample={self.on_bad_sample!r}; choose 'error' or 'skip'")
        if self.offload_checkpoints and not self.gradient_checkpointing:
            raise ValueError("TrainConfig.offload_checkpoints=True offloads the inputs that gradient checkpointing "
                             "keeps; set gradient_checkpointing=True too (or offload_checkpoints=False)")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    losses: list[float]
    skipped_samples: int
    train_seconds: float
    out_dir: Path
    log: list[dict] = field(default_factory=list)


def train(model, samples: list[VLSample], config: TrainConfig, resume: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Train `model` (a fastmma.LaVIN) on `samples`. Resumes from the newest checkpoint in out_dir.

    stop_after: stop (after checkpointing) once this many steps are done, as if interrupted.
    Under torchrun, call fastmma.distributed.init_distributed() first; every rank passes the same
    model, samples and config, and `model` on the rank's device (fastmma.distributed.rank_device()).
    """
    distributed.check_divisible(config.batch_size, distributed.world_size(), what="TrainConfig.batch_size")
    checkpoint = check_out_dir(config, resume)
    main_process = distributed.is_main_process()
    encoded, skipped = encode_all(model, samples, config)
    total_steps = config.steps or max(1, math.ceil(config.epochs * len(encoded) / config.batch_size))
    lr = config.lr if config.lr is not None else lavin_learning_rate(config.batch_size)
    warmup = config.warmup_steps if config.warmup_steps is not None else max(1, total_steps // 10)
    optimizer = build_optimizer(model, lr=lr, weight_decay=config.weight_decay, betas=config.betas)
    scaler = _grad_scaler(config, model)
    out_dir = Path(config.out_dir)
    state = TrainState(step=0, losses=[], log=[])
    if checkpoint is None and hasattr(model, "prepare_for_training"):
        model.prepare_for_training(samples)             # e.g. LaVIN's visual feature statistics
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer)
        if main_process:
            print(f"resuming from {checkpoint} at step {state.step}/{total_steps}")
    _set_checkpointing(model, config.gradient_checkpointing, config.offload_checkpoints,
                       config.checkpoint_every_n_layers)
    runner = distributed.wrap_ddp(model) if distributed.is_distributed() else model

    model.train()
    started = time.perf_counter()
    progress = tqdm(range(state.step, total_steps), initial=state.step, total=total_steps, desc="training",
                    dynamic_ncols=True, disable=not main_process)
    for step in progress:
        _set_lr(optimizer, lr * warmup_cosine_factor(step, total_steps, warmup))
        step_started = time.perf_counter()
        loss, tokens = _optimizer_step(runner, optimizer, scaler, encoded, step, config)
        state.step = step + 1
        state.losses.append(loss)
        state.log.append({"step": state.step, "loss": loss, "lr": optimizer.param_groups[0]["lr"],
                          "tokens_per_second": tokens / (time.perf_counter() - step_started)})
        progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{state.log[-1]['tokens_per_second']:.0f}")
        finished = state.step == total_steps or (stop_after is not None and state.step >= stop_after)
        if state.step % config.checkpoint_every == 0 or finished:
            if main_process:
                save_checkpoint(out_dir, model, optimizer, state, config, skipped, keep=config.keep_checkpoints)
            distributed.barrier()                   # no rank runs ahead of (or reads) an unfinished checkpoint
        if finished:
            break
    progress.close()
    model.eval()
    if skipped and main_process:
        print(f"skipped {skipped} sample(s) that could not be used (on_bad_sample='skip')")
    return TrainResult(state.losses, skipped, time.perf_counter() - started, out_dir, state.log)


def check_out_dir(config: TrainConfig, resume: bool = True) -> Path | None:
    """Check, before any model is built, that out_dir can hold this run and that the checkpoint it would
    resume from was trained with the same settings; return that checkpoint (None: start at step 0)."""
    out_dir = Path(config.out_dir)
    check_output_folder(out_dir, "TrainConfig.out_dir")
    checkpoint = latest_checkpoint(out_dir) if resume else None
    if checkpoint is not None:
        _check_same_settings(read_trainer_state(checkpoint)["config"], config, checkpoint)
    return checkpoint


def check_output_folder(path: str | Path, what: str) -> None:
    """Raise if `path` cannot be a folder to write into: it, or a folder above it, is an existing file."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ValueError(f"{what} {str(path)!r} cannot be a folder: {existing} is an existing file; choose "
                         f"another path or move the file away")


def _check_same_settings(saved: dict, config: TrainConfig, checkpoint: Path) -> None:
    now = json.loads(json.dumps(config.to_dict()))         # as saved: tuples become lists
    ignored = RESUMABLE_CHANGES | ({"epochs"} if config.steps is not None else set())   # epochs: only without steps
    differing = [f"{name} {saved[name]!r} saved vs {now[name]!r} now" for name in now
                 if name not in ignored and name in saved and saved[name] != now[name]]
    if differing:
        raise ValueError(f"{checkpoint} was trained with other settings ({'; '.join(differing)}); resuming would "
                         f"continue it with the new ones. Rerun with the saved settings, start over with "
                         f"--no-resume (resume=False), or choose another out_dir")


def encode_all(model, samples: list[VLSample], config: TrainConfig) -> tuple[list[EncodedSample], int]:
    encoded, skipped = [], 0
    for sample in samples:
        try:
            encoded.append(model.encode(sample, config.max_length))
        except ValueError:
            if config.on_bad_sample == "error":
                raise
            skipped += 1
    if not encoded:
        raise ValueError(f"the training set is empty ({len(samples)} samples given, {skipped} skipped); "
                         f"check the data source")
    return encoded, skipped


def batch_indices(step: int, batch_size: int, num_samples: int, seed: int) -> list[int]:
    """Sample indices of optimizer step `step`: consecutive slices of a per-epoch permutation."""
    indices = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, num_samples)
        permutation = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        indices.append(int(permutation[offset]))
    return indices


def _optimizer_step(model, optimizer, scaler, encoded, step, config) -> tuple[float, int]:
    """One optimizer step on the global batch of `step` (this rank's shard of it under DDP).

    Returns the global batch's loss (mean over its answer tokens) and its token count, over all ranks.
    """
    rank, world = distributed.rank(), distributed.world_size()
    torch.manual_seed(config.seed * 1_000_003 + step * world + rank)   # dropout depends only on (seed, step, rank)
    chosen = [encoded[i] for i in batch_indices(step, config.batch_size, len(encoded), config.seed)]
    answer_tokens = max(1, sum(_answer_tokens(s) for s in chosen))     # of the global batch, on every rank
    mine = distributed.rank_shard(chosen, rank, world)
    micro = config.micro_batch_size or config.batch_size
    parts = [mine[start:start + micro] for start in range(0, len(mine), micro)]
    total_loss, total_tokens = 0.0, 0
    for index, part in enumerate(parts):
        weight = sum(_answer_tokens(s) for s in part) / answer_tokens
        with distributed.gradient_sync(model, enabled=index == len(parts) - 1):
            with _autocast(config, model):
                loss = model(part).loss * weight               # this part's share of the global mean loss
            scaled = loss * world                              # DDP averages gradients over the ranks
            (scaler.scale(scaled) if scaler else scaled).backward()
        total_loss += loss.item()
        total_tokens += sum(len(s.prefix_ids) + len(s.text_ids) for s in part)
    if world > 1:
        total_loss, total_tokens = distributed.all_reduce_sum([total_loss, total_tokens])
        total_tokens = int(total_tokens)
    if scaler:
        scaler.unscale_(optimizer)
    if config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.max_grad_norm)
    if not math.isfinite(total_loss):
        raise FloatingPointError(f"the loss became {total_loss} at step {step}; lower the learning rate")
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total_loss, total_tokens


def _answer_tokens(sample: EncodedSample) -> int:
    return sum(label != -100 for label in sample.text_labels)


def _autocast(config: TrainConfig, model):
    if config.precision == "fp32":
        return nullcontext()
    device_type = next(model.parameters()).device.type
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    return torch.autocast(device_type, dtype=dtype)


def _grad_scaler(config: TrainConfig, model):
    if config.precision != "fp16":
        return None
    if next(model.parameters()).device.type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA device (it uses loss scaling); use 'bf16' or 'fp32' on CPU")
    return torch.amp.GradScaler("cuda")


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _set_checkpointing(model, enabled: bool, offload: bool = False, every_n_layers: int = 1) -> None:
    if enabled:
        enable_checkpointing(model.llm, offload=offload, every_n_layers=every_n_layers)
    else:
        disable_checkpointing(model.llm)
