"""Training memory and step time on a CUDA GPU: fastmma against the no-adapter floor, LaVIN-style adapters and
PEFT LoRA, and the measured peak memory against `fastmma.estimate_memory`.

    python3 benchmarks/gpu/training.py --json gpu-training.json
    python3 benchmarks/gpu/training.py --cases smollm2 --rounds 30

Cases (random weights with the models' dimensions: the time and memory of a step do not depend on the
values; no download):
  smollm2   SmolLM2-135M (preset smollm2-135m), B=4, L=256, fp32 and bf16 base: every variant of
            benchmarks/memory.py (the no-adapter floor, LaVIN-style, PEFT LoRA r=8 q,v when installed, fastmma
            defaults, recompute_attention=False, every layer checkpointed), steps interleaved round by round
  llama7b   LLaMA-7B (preset llama-7b, 32 layers), bf16 base, L=512, batch 1 / 4 / 8: fastmma defaults,
            recompute_attention=False and checkpointing, and at batch 4 the floor and LaVIN-style; each variant
            alone on the GPU (built, measured, freed), its steps timed back to back
A step is forward + loss + backward + AdamW on the trainable parameters (the floor has none: its input
embeddings require grad, so backward runs through every layer). Time: wall clock of a step ending in
torch.cuda.synchronize, median and quartiles over --rounds steps after --warmup (Triton compiles in the
first). Memory: torch.cuda.max_memory_allocated over one step, less what was allocated before the step that
is not the model's (static bytes: the model's parameters, buffers and AdamW states; plus the step's rise);
estimate: fastmma.estimate_memory without the GPU allowance (gpu_overhead=False) against that, and with it
against the device memory in use at the step's end (torch.cuda.mem_get_info, CUDA context included).
Without a CUDA GPU it says so and exits 0.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # benchmarks/: memory.py, timing.py

import fastmma  # noqa: E402
from fastmma.checkpointing import enable_checkpointing  # noqa: E402
from fastmma.memory.estimate import PRESETS, estimate_memory  # noqa: E402
from fastmma.ops import backend, cpp_cross_entropy, cpp_swiglu  # noqa: E402
from fastmma.patching import cpu_attention  # noqa: E402
from memory import NO_RECOMPUTE_ATTENTION, lavin_style, peft_lora, static_bytes  # noqa: E402  (benchmarks/memory.py)
from timing import interleaved, summary  # noqa: E402  (benchmarks/timing.py)

GIB = 1024 ** 3
DEVICE = "cuda"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def random_base(preset: str, dtype: torch.dtype, seed: int = 0):
    """A LlamaForCausalLM with the preset's dimensions and random weights, built on the GPU in `dtype`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**PRESETS[preset], max_position_embeddings=2048)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(DEVICE):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.requires_grad_(False)


def fastmma_config(variant: str) -> fastmma.MMAConfig:
    return NO_RECOMPUTE_ATTENTION if variant == "fastmma_no_recompute_attention" else fastmma.MMAConfig()


def build_variant(name: str, base):
    """(model, forward kwargs without the inputs) for one variant; `base` is consumed (patched in place)."""
    if name == "hf_no_adapter":
        return base, {}
    if name == "lavin_style":
        return lavin_style(base, linear_form=False), {}
    if name == "peft_lora_qv":
        return peft_lora(base), {}
    model = fastmma.patch(base, fastmma_config(name))
    if name == "fastmma_ckpt":
        enable_checkpointing(model)
    return model, {"modality": 0}


class TrainingStep:
    """One AdamW training step of a model on fixed inputs, ending in a device synchronization."""

    def __init__(self, model, extra_kwargs: dict, ids: torch.Tensor):
        self.model = model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-5) if trainable else None
        self.embeds = model.get_input_embeddings()(ids).detach().requires_grad_() if not trainable else None
        inputs = {"inputs_embeds": self.embeds} if self.embeds is not None else {"input_ids": ids}
        self.kwargs = dict(inputs, labels=ids, **extra_kwargs)

    def __call__(self) -> None:
        if self.embeds is not None:
            self.embeds.grad = None
        self.model(**self.kwargs).loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    def static_bytes(self) -> int:
        return static_bytes(self.model, self.optimizer)


def peak_of_step(step: TrainingStep) -> dict:
    """The step's peak: the model's static bytes + the largest rise over what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    rise = torch.cuda.max_memory_allocated() - before
    free, total = torch.cuda.mem_get_info()
    return {"peak_bytes": step.static_bytes() + rise, "process_peak_allocated_bytes": torch.cuda.max_memory_allocated(),
            "reserved_bytes": torch.cuda.max_memory_reserved(), "device_used_bytes": total - free}


def estimate_for(variant: str, model, batch: int, seq_len: int, dtype: torch.dtype) -> dict:
    kwargs = dict(checkpointing=variant == "fastmma_ckpt", config=fastmma_config(variant),
                  fused_swiglu=backend.has_implementation(cpp_swiglu.OP_SWIGLU, DEVICE),
                  fused_loss=cpp_cross_entropy.applies(torch.device(DEVICE), dtype),
                  fused_attention=model.config._attn_implementation == cpu_attention.NAME)
    bare = estimate_memory(model.config, batch, seq_len, dtype, gpu_overhead=False, **kwargs)
    with_overhead = estimate_memory(model.config, batch, seq_len, dtype, gpu_overhead=True, **kwargs)
    return {"estimated_peak_allocated_bytes": bare.peak_allocated_bytes,
            "estimated_peak_with_gpu_allowance_bytes": with_overhead.peak_bytes}


def describe(case: str, variant: str, row: dict) -> None:
    text = f"{case:24s} {variant:32s} peak {row['peak_bytes'] / GIB:7.3f} GiB"
    if "estimated_peak_allocated_bytes" in row:
        text += (f", estimate {row['estimated_peak_allocated_bytes'] / GIB:7.3f} GiB "
                 f"({row['estimated_peak_allocated_bytes'] / row['peak_bytes']:.3f}x); device in use "
                 f"{row['device_used_bytes'] / GIB:.2f} GiB, estimate with GPU allowance "
                 f"{row['estimated_peak_with_gpu_allowance_bytes'] / GIB:.2f} GiB")
    if "step_ms" in row:
        s = row["step_ms"]
        text += f"; step {s['median_ms']:.1f} ms (IQR {s['q1_ms']:.1f}-{s['q3_ms']:.1f})"
    print(text, flush=True)


def smollm2_case(dtype_name: str, variants: list[str], rounds: int, warmup: int) -> dict:
    """Every variant alive at once (135M parameters each), steps interleaved round by round."""
    dtype = DTYPES[dtype_name]
    batch, seq_len = 4, 256
    ids = torch.randint(0, PRESETS["smollm2-135m"]["vocab_size"], (batch, seq_len),
                        generator=torch.Generator().manual_seed(0)).to(DEVICE)
    steps, rows = {}, {}
    for variant in variants:
        model, extra = build_variant(variant, random_base("smollm2-135m", dtype))
        if model is None:
            continue
        steps[variant] = step = TrainingStep(model, extra, ids)
        for _ in range(warmup):
            step()
        rows[variant] = peak_of_step(step)
        if variant.startswith("fastmma"):
            rows[variant].update(estimate_for(variant, model, batch, seq_len, dtype))
    times = interleaved(steps, rounds, 0)
    for variant, seconds in times.items():
        rows[variant]["step_ms"] = summary(seconds)
    floor = rows["hf_no_adapter"]["step_ms"]["median_ms"]
    for variant, row in rows.items():
        row["step_over_floor"] = row["step_ms"]["median_ms"] / floor
        describe(f"smollm2 {dtype_name} B={batch} L={seq_len}", variant, row)
    del steps
    gc.collect()
    torch.cuda.empty_cache()
    return {"preset": "smollm2-135m", "dtype": dtype_name, "batch": batch, "seq_len": seq_len, "variants": rows}


def llama7b_case(batch: int, variants: list[str], rounds: int, warmup: int, seq_len: int = 512) -> dict:
    """One variant at a time on the GPU (a 7B model is 12.6 GiB in bf16)."""
    ids = torch.randint(0, PRESETS["llama-7b"]["vocab_size"], (batch, seq_len),
                        generator=torch.Generator().manual_seed(0)).to(DEVICE)
    rows = {}
    for variant in variants:
        model, extra = build_variant(variant, random_base("llama-7b", torch.bfloat16))
        if model is None:
            continue
        step = TrainingStep(model, extra, ids)
        for _ in range(warmup):
            step()
        row = rows[variant] = peak_of_step(step)
        if variant.startswith("fastmma"):
            row.update(estimate_for(variant, model, batch, seq_len, torch.bfloat16))
        row["step_ms"] = summary(interleaved({variant: step}, rounds, 0)[variant])
        describe(f"llama7b bf16 B={batch} L={seq_len}", variant, row)
        del step, model
        gc.collect()
        torch.cuda.empty_cache()
    return {"preset": "llama-7b", "dtype": "bf16", "batch": batch, "seq_len": seq_len, "variants": rows}


SMOLLM2_VARIANTS = ["hf_no_adapter", "lavin_style", "peft_lora_qv", "fastmma", "fastmma_no_recompute_attention",
                    "fastmma_ckpt"]
LLAMA7B_VARIANTS = ["fastmma", "fastmma_no_recompute_attention", "fastmma_ckpt"]


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--cases", nargs="+", default=["smollm2", "llama7b"], choices=["smollm2", "llama7b"])
    parser.add_argument("--rounds", type=int, default=20, help="timed steps per variant (>= 10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches-7b", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args(argv)
    if args.rounds < 10:
        parser.error("--rounds must be at least 10 (the median and quartiles need them)")
    if not torch.cuda.is_available():
        print("benchmarks/gpu/training.py needs a CUDA GPU; none is visible here. Nothing was measured.")
        return None
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": {"gpu": torch.cuda.get_device_name(), "python": platform.python_version(),
                           "torch": torch.__version__, "cuda": torch.version.cuda,
                           "transformers": __import__("transformers").__version__,
                           "triton": __import__("triton").__version__},
               "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
               "cases": []}
    if "smollm2" in args.cases:
        for dtype_name in ("fp32", "bf16"):
            results["cases"].append(smollm2_case(dtype_name, SMOLLM2_VARIANTS, args.rounds, args.warmup))
    if "llama7b" in args.cases:
        for batch in args.batches_7b:
            extra = ["hf_no_adapter", "lavin_style"] if batch == 4 else []
            results["cases"].append(llama7b_case(batch, extra + LLAMA7B_VARIANTS, args.rounds, args.warmup))
    if args.json:
        from fastmma.atomic import write_json_atomic

        write_json_atomic(args.json, results)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
