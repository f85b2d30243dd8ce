"""transformers.Trainer for models patched with fastmma.patch: adapters-only optimizer and checkpoints.

    from fastmma.hf_trainer import AdapterTrainer
    trainer = AdapterTrainer(model=patched_model, args=TrainingArguments(...), train_dataset=...,
                             data_collator=collate)      # batches may carry "modality": LongTensor [B]
    trainer.train()                                      # or trainer.train(resume_from_checkpoint=True)
    fastmma.load_adapters(base_model, "out/checkpoint-100")

What differs from a plain Trainer:
- the optimizer holds `fastmma.adapter_parameters(model)` and nothing else (matrices decayed with
  `args.weight_decay`, biases and 1-D tensors not decayed);
- `save_model` (so every `checkpoint-N`, and the final save) writes `adapter_model.safetensors` +
  `adapter_config.json` with fastmma.save_adapters, from the main process only, instead of the
  whole model; resuming and `load_best_model_at_end` read them back with fastmma.load_adapters;
- under DDP (torchrun / accelerate launch) it defaults to find_unused_parameters=False (every
  adapter gets a gradient at every step) and no per-forward buffer broadcast.
A batch's "modality" entry reaches the patched forward as the `modality=` keyword, like any model input.
FSDP and DeepSpeed are not supported by this class.
"""
from __future__ import annotations

import os

from torch import nn
from transformers import Trainer, TrainingArguments

from .optim import named_parameter_groups
from .patching import adapter_parameters, is_patched
from .serialization import ADAPTER_CONFIG, load_adapters, save_adapters


class AdapterTrainer(Trainer):
    """A transformers.Trainer whose optimizer and checkpoints hold only the fastmma adapters."""

    def __init__(self, model: nn.Module | None = None, args=None, *trainer_args, **trainer_kwargs):
        if model is None or not is_patched(model):
            raise ValueError("AdapterTrainer trains a model patched with fastmma.patch (or loaded with "
                             "fastmma.load_adapters); patch the model before building the trainer")
        if args is None:
            args = TrainingArguments(output_dir="trainer_output")          # what Trainer would make
        if args.ddp_find_unused_parameters is None:
            args.ddp_find_unused_parameters = False
        if args.ddp_broadcast_buffers is None:
            args.ddp_broadcast_buffers = False
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise ValueError("AdapterTrainer does not support FSDP or DeepSpeed (it saves adapters from an unsharded "
                             "model); train with DDP: launch with torchrun or accelerate launch without --use_fsdp")

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = model if model is not None else self.model
            groups = named_parameter_groups(adapter_parameters(_unwrapped(opt_model)).items(),
                                            self.args.weight_decay)
            if self.optimizer_cls_and_kwargs is not None:
                optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
            else:
                optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls([g for g in groups if g["params"]], **optimizer_kwargs)
        return self.optimizer

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write the adapters (safetensors + JSON) and the processing class, from the main process only."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        save_adapters(self.accelerator.unwrap_model(self.model), output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if not os.path.isfile(os.path.join(resume_from_checkpoint, ADAPTER_CONFIG)):
            raise ValueError(f"{resume_from_checkpoint} holds no fastmma adapters ({ADAPTER_CONFIG}); resume from a "
                             f"checkpoint written by AdapterTrainer")
        load_adapters(_unwrapped(model if model is not None else self.model), resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)


def _unwrapped(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model
