"""What each rank runs in the multi-process tests (tests/test_distributed.py, tests/test_hf_trainer.py).

    python3 -m tests.distributed_workers SCENARIO OUT_DIR [ARGS...]

started once per rank by tests/distributed_harness.py, torchrun or accelerate launch. Each rank saves
what the test checks to OUT_DIR/<scenario>-rank<r>.pt. The single-process references are computed by
the tests themselves, from the same builders (`mma_model`, `mma_batch`, ...), which live here.
On success a worker waits for the others, leaves the process group and ends with os._exit(0): gloo
can abort in interpreter shutdown otherwise. On an exception it prints it and ends with os._exit(1).
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

import fastmma
from fastmma import distributed
from fastmma.data.samples import VLSample

MMA_STEPS = 3
MMA_LR = 1e-2


# --- builders shared with the tests -------------------------------------------------------------------------

def mma_model(chunked_loss: bool = True):
    """A tiny random Llama with MMA adapters, all random (the same on every rank and in the test)."""
    from .helpers import randomize_adapters, tiny_causal_lm

    model = tiny_causal_lm(seed=0)
    torch.manual_seed(5)
    fastmma.patch(model, fastmma.MMAConfig(rank=4, groups=2, dropout=0.0, chunked_loss=chunked_loss))
    randomize_adapters(model, seed=7)
    return model


def mma_batch(step: int):
    """Global batch of `step`: input_ids [4, 12], labels [4, 12] and modality [4].

    Rows 0-1 (rank 0's shard of 2) are text with long answers, rows 2-3 (rank 1's) images with short
    ones, so the ranks hold different numbers of answer tokens: per-rank means would not average to
    the global mean.
    """
    generator = torch.Generator().manual_seed(100 + step)
    input_ids = torch.randint(3, 97, (4, 12), generator=generator)
    labels = input_ids.clone()
    for row, prompt_length in enumerate((2, 3, 8, 10)):
        labels[row, :prompt_length] = -100
    return input_ids, labels, torch.tensor([0, 0, 1, 1])


def answer_tokens(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != -100).sum())


def mwa_model():
    from fastmma.mwa import MWAConfig, adapter_parameters
    from fastmma.mwa.beit3 import BEiT3Dims, build_beit3

    torch.manual_seed(0)
    dims = BEiT3Dims(embed_dim=32, layers=2, heads=4, ffn_dim=48, img_size=16, patch_size=8, vocab_size=30,
                     max_source_positions=16)
    model = build_beit3(dims)
    fastmma.patch(model, MWAConfig(rank=6, scale=0.5, dropout=0.0, enhancer_rank=7))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, param in sorted(adapter_parameters(model).items()):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


def mwa_inputs(step: int) -> list[tuple[dict, torch.Tensor]]:
    """Per rank: (BEiT-3 inputs, CLS target [2, 32]); rank 0 gets 2 images only, rank 1 gets 2 texts only."""
    generator = torch.Generator().manual_seed(200 + step)
    images = torch.randn(2, 3, 16, 16, generator=generator)
    texts = torch.randint(0, 30, (2, 6), generator=generator)
    targets = torch.randn(2, 2, 32, generator=generator)
    return [({"visual_tokens": images}, targets[0]), ({"textual_tokens": texts}, targets[1])]


def mwa_loss(model, inputs: dict, target: torch.Tensor) -> torch.Tensor:
    cls = model(**inputs)["encoder_out"][:, 0]                                     # [2, 32]
    return (cls - target).pow(2).mean()


def colour_samples() -> list[VLSample]:
    """Two pictures and two text-only instructions."""
    from .lavin_helpers import solid_image

    return [VLSample(solid_image((255, 0, 0)), [("What colour is the image?", "red")]),
            VLSample(solid_image((0, 0, 255)), [("What colour is the image?", "blue")]),
            VLSample(None, [("What is two plus two?", "four")]),
            VLSample(None, [("Say yes.", "yes")])]


def lavin_train_config(out_dir: Path, seed: int):
    from fastmma.train import TrainConfig

    return TrainConfig(out_dir=str(out_dir), steps=4, batch_size=4, micro_batch_size=1, lr=3e-3, checkpoint_every=2,
                       seed=seed)


def trainer_dataset():
    """Eight token sequences with different prompt lengths and alternating modalities."""
    class Sequences(torch.utils.data.Dataset):
        def __init__(self):
            self.input_ids = torch.randint(3, 97, (8, 12), generator=torch.Generator().manual_seed(0))

        def __len__(self):
            return len(self.input_ids)

        def __getitem__(self, index):
            labels = self.input_ids[index].clone()
            labels[: 2 + index % 6] = -100
            return {"input_ids": self.input_ids[index], "labels": labels, "modality": torch.tensor(index % 2)}

    return Sequences()


def trainer_arguments(output_dir: Path, per_device_batch: int):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=per_device_batch, max_steps=4,
                             save_steps=2, learning_rate=1e-2, logging_steps=1, use_cpu=True, report_to="none",
                             train_sampling_strategy="sequential", disable_tqdm=True, seed=0)


# --- scenarios ----------------------------------------------------------------------------------------------

def models(out: Path) -> None:
    """DDP on MMA (with the all-reduce byte counter) and MWA; FSDP2 and FSDP1 on MMA."""
    results = {"mma": _ddp_mma(), "mwa": _ddp_mwa(), "fsdp2_root": _fsdp2_root(), "fsdp1_layers": _fsdp1_layers()}
    results["fsdp1_chunked_loss_error"] = _fsdp1_chunked_loss_error()
    results["fsdp2_layers_error"] = _fsdp2_per_layer_error()
    _save(out, "models", results)


def _ddp_mma() -> dict:
    rank, world = distributed.rank(), distributed.world_size()
    model = mma_model()
    ddp = distributed.wrap_ddp(model)
    counter = distributed.count_all_reduced_bytes(ddp)
    params = fastmma.adapter_parameters(model)
    optimizer = torch.optim.AdamW(params.values(), lr=MMA_LR)
    record = {"loss": [], "grads": [], "bytes": [], "buckets": [],
              "adapter_bytes": sum(p.numel() * p.element_size() for p in params.values()),
              "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
    for step in range(MMA_STEPS):
        input_ids, labels, modality = mma_batch(step)
        rows = distributed.rank_shard(range(4), rank, world)
        output = ddp(input_ids=input_ids[rows], labels=labels[rows], modality=modality[rows],
                     num_items_in_batch=answer_tokens(labels))                 # sum of my token losses / global count
        (output.loss * world).backward()                                      # DDP averages over the ranks
        record["loss"].append(distributed.all_reduce_sum([output.loss.item()])[0])
        record["grads"].append({name: p.grad.clone() for name, p in params.items()})
        record["buckets"].append(counter.buckets)
        record["bytes"].append(counter.take())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    record["final"] = {name: p.detach().clone() for name, p in params.items()}
    return record


def _ddp_mwa() -> dict:
    from fastmma.mwa import adapter_parameters

    model = mwa_model()
    ddp = distributed.wrap_ddp(model)
    params = adapter_parameters(model)
    optimizer = torch.optim.AdamW(params.values(), lr=MMA_LR)
    record = {"loss": [], "grads": []}
    for step in range(2):
        inputs, target = mwa_inputs(step)[distributed.rank()]
        loss = mwa_loss(ddp, inputs, target)                                  # equal samples per rank: mean of means
        loss.backward()
        record["loss"].append(distributed.all_reduce_sum([loss.item()])[0] / distributed.world_size())
        record["grads"].append({name: p.grad.clone() for name, p in params.items()})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return record


def _fsdp2_root() -> dict:
    from torch.distributed.fsdp import fully_shard

    rank, world = distributed.rank(), distributed.world_size()
    model = mma_model()
    names = list(fastmma.adapter_parameters(model))
    fully_shard(model)                                       # one unit: the whole model, sharded between steps
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW([params[name] for name in names], lr=MMA_LR)
    record = {"loss": [], "grads": []}
    for step in range(2):
        input_ids, labels, modality = mma_batch(step)
        rows = distributed.rank_shard(range(4), rank, world)
        output = model(input_ids=input_ids[rows], labels=labels[rows], modality=modality[rows],
                       num_items_in_batch=answer_tokens(labels))
        (output.loss * world).backward()
        record["loss"].append(distributed.all_reduce_sum([output.loss.item()])[0])
        record["grads"].append({name: params[name].grad.full_tensor().clone() for name in names})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    record["final"] = {name: params[name].detach().full_tensor().clone() for name in names}
    return record


def _fsdp1_layers() -> dict:
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    rank, world = distributed.rank(), distributed.world_size()
    model = mma_model(chunked_loss=False)
    names = set(fastmma.adapter_parameters(model))
    wrapped = FullyShardedDataParallel(model, use_orig_params=True, device_id=torch.device("cpu"),
                                       auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}))
    input_ids, labels, modality = mma_batch(0)
    rows = distributed.rank_shard(range(4), rank, world)
    output = wrapped(input_ids=input_ids[rows], labels=labels[rows], modality=modality[rows],
                     num_items_in_batch=answer_tokens(labels))
    (output.loss * world).backward()
    grads = {}
    with FullyShardedDataParallel.summon_full_params(wrapped, with_grads=True):
        for name, param in wrapped.named_parameters():
            name = name.replace("_fsdp_wrapped_module.", "")
            if name in names:
                grads[name] = param.grad.clone()
    return {"loss": distributed.all_reduce_sum([output.loss.item()])[0], "grads": grads}


def _fsdp1_chunked_loss_error() -> str:
    """The error of FSDP1 with fastmma's default chunked loss, as the README quotes it."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    wrapped = FullyShardedDataParallel(mma_model(), use_orig_params=True, device_id=torch.device("cpu"))
    input_ids, labels, modality = mma_batch(0)
    try:
        wrapped(input_ids=input_ids, labels=labels, modality=modality)
    except ValueError as err:
        return f"{type(err).__name__}: {err}"
    return ""


def _fsdp2_per_layer_error() -> str:
    """The error of per-decoder-layer fully_shard (the memory-saving layout), as the README quotes it."""
    from torch.distributed.fsdp import fully_shard

    model = mma_model()
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    input_ids, labels, modality = mma_batch(0)
    try:
        model(input_ids=input_ids, labels=labels, modality=modality).loss.backward()
    except RuntimeError as err:
        return f"{type(err).__name__}: {err}"
    return ""


def lavin_train(out: Path, tokenizer_dir: str, seed: str, fail_at_call: str = "") -> None:
    """fastmma.train on tiny LaVIN: stopped after 2 of 4 steps, then resumed on a fresh model.

    Records each forward's modalities; with `fail_at_call` = k, rank 1 raises in its k-th forward.
    """
    from transformers import AutoTokenizer

    from fastmma.train import train

    from .lavin_helpers import tiny_lavin

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = lavin_train_config(out / "run", int(seed))
    calls: list[list[int]] = []

    def build():
        model = tiny_lavin(tok=tokenizer)
        forward = model.forward

        def recording_forward(encoded):
            calls.append([sample.modality for sample in encoded])
            if fail_at_call and distributed.rank() == 1 and len(calls) == int(fail_at_call):
                raise RuntimeError(f"injected failure on rank 1 in forward {len(calls)}")
            return forward(encoded)

        model.forward = recording_forward
        return model

    first = train(build(), colour_samples(), config, stop_after=2)
    resumed_model = build()
    second = train(resumed_model, colour_samples(), config)
    _save(out, "lavin_train", {"first": first.losses, "second": second.losses, "calls": calls,
                               "final": {k: v.detach().clone() for k, v in resumed_model.trainable_state().items()}})


def trainer(out: Path) -> None:
    """AdapterTrainer under accelerate launch: 2 processes x 2 samples per step."""
    from fastmma.hf_trainer import AdapterTrainer

    from .helpers import tiny_causal_lm

    model = tiny_causal_lm(seed=0)
    torch.manual_seed(5)
    fastmma.patch(model, fastmma.MMAConfig(rank=4, groups=2, dropout=0.0))
    trainer = AdapterTrainer(model=model, args=trainer_arguments(out / "trainer", per_device_batch=2),
                             train_dataset=trainer_dataset())
    trainer.train()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    wrapped = trainer.model_wrapped
    _save(out, "trainer", {
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "optimizer_is_adapters": optimized == {id(p) for p in fastmma.adapter_parameters(model).values()},
        "ddp": type(wrapped).__name__, "find_unused_parameters": getattr(wrapped, "find_unused_parameters", None),
        "final": {k: v.detach().clone() for k, v in fastmma.adapter_parameters(model).items()},
    })


SCENARIOS = {"models": models, "lavin_train": lavin_train, "trainer": trainer}


def _save(out: Path, scenario: str, record) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save(record, out / f"{scenario}-rank{rank}.pt")


def main(argv: list[str]) -> None:
    scenario, out, *extra = argv
    torch.set_num_threads(1)
    try:
        if scenario != "trainer":                       # the Trainer sets up its own process group
            distributed.init_distributed()
        SCENARIOS[scenario](Path(out), *extra)
        if dist.is_initialized():
            dist.barrier()
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    if dist.is_initialized():
        dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
