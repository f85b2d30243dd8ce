"""Saved-for-backward activation memory of one training forward, per token per layer.

Variants, all with a frozen base and backward through every layer:
  hf_no_adapter   the Hugging Face model alone (input embeddings require grad): the floor
  lavin_style     fastmma's adapters run through the LaVIN-layout reference (conv layout, eager),
                  with the plain MLP and full logits: what LaVIN's code keeps
  fastmma         fastmma.patch defaults: fused norm+adapter op, recomputing SwiGLU, chunked loss
  peft_lora_qv    PEFT LoRA r=8 on q and v (only if `peft` is installed)
at SmolLM2-135M (fp32, B=4, L=256) and at one LLaMA-7B-sized layer (bf16, B=1, L=256).
Bytes are counted with torch.autograd.graph.saved_tensors_hooks, each storage once, the frozen
parameters (which autograd also references for input gradients) excluded.

    python3 benchmarks/memory.py [--json out.json] [--png out.png] [--skip-7b]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import fastmma


def saved_bytes(run, model) -> int:
    """Activation bytes autograd keeps during `run()`: saved tensors, each storage once, parameters excluded."""
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(storages.values())


def measure(model, ids, adapters: bool) -> int:
    model.train()
    labels = ids.clone()
    if adapters:
        return saved_bytes(lambda: model(ids, labels=labels, modality=0).loss, model)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    return saved_bytes(lambda: model(inputs_embeds=embeds, labels=labels).loss, model)


def variants(base):
    yield "hf_no_adapter", base, False, None
    plain = fastmma.MMAConfig(dropout=0.0, recompute_swiglu=False, chunked_loss=False)
    yield "lavin_style", fastmma.patch(copy.deepcopy(base), plain), True, "reference"
    yield "fastmma", fastmma.patch(copy.deepcopy(base), fastmma.MMAConfig(dropout=0.0)), True, None
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        return
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    yield "peft_lora_qv", lora, False, None


def run_case(name, base, ids, layers):
    rows = {}
    tokens = ids.numel()
    for variant, model, adapters, backend in variants(base):
        previous = os.environ.pop("FASTMMA_BACKEND", None)
        if backend:
            os.environ["FASTMMA_BACKEND"] = backend
        try:
            total = measure(model, ids, adapters)
        finally:
            os.environ.pop("FASTMMA_BACKEND", None)
            if previous is not None:
                os.environ["FASTMMA_BACKEND"] = previous
        rows[variant] = {"total_bytes": total, "kb_per_token_per_layer": total / tokens / layers / 1024}
        print(f"{name:22s} {variant:14s} {total / 2**20:9.1f} MiB  {rows[variant]['kb_per_token_per_layer']:7.1f} "
              f"KB/token/layer (activations, logits included)")
    return rows


def smollm2_case():
    from fastmma.models import load_default_llm

    model, _ = load_default_llm()
    ids = torch.randint(0, model.config.vocab_size, (4, 256), generator=torch.Generator().manual_seed(0))
    return run_case("SmolLM2-135M fp32", model, ids, model.config.num_hidden_layers)


def llama7b_layer_case():
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                         num_hidden_layers=1, vocab_size=1024)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    ids = torch.randint(0, 1024, (1, 256), generator=torch.Generator().manual_seed(0))
    return run_case("LLaMA-7B layer bf16", model, ids, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--png", default=None)
    parser.add_argument("--skip-7b", action="store_true")
    args = parser.parse_args()
    results = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
               "torch": torch.__version__, "smollm2_fp32_b4_l256": smollm2_case()}
    if not args.skip_7b:
        results["llama7b_layer_bf16_b1_l256"] = llama7b_layer_case()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    if args.png:
        draw(results, args.png)


def draw(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [k for k in results if isinstance(results[k], dict)]
    figure, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 3.5))
    for axis, case in zip(axes if len(cases) > 1 else [axes], cases):
        names = list(results[case])
        axis.bar(names, [results[case][n]["kb_per_token_per_layer"] for n in names])
        axis.set_title(case)
        axis.set_ylabel("KB saved / token / layer")
        axis.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    main()
