"""Activation memory kept for backward, per decoder layer, and training-step time, against LaVIN-style,
PEFT and the no-adapter floor.

Variants (frozen base, backward through every layer):
  hf_no_adapter   the Hugging Face model alone, input embeddings requiring grad: the floor
  lavin_style     HF model + LaVIN's eager adapter (fastmma.reference.LaVINAdapter: grouped 1x1 Conv1d on a
                  [B, D, L] transpose, router reading token 0, dropout 0.1) on the output of every attention
                  input norm, as LaVIN does; HF's RMSNorm, HF's MLP, HF's full-logits loss. In bf16 the same
                  adapter runs in its Linear/einsum form (`LaVINLinearAdapter`: same parameters, the same saved
                  tensors), because bf16 Conv1d weight gradients crash this CPU; at fp32 the script checks that
                  both forms keep the same bytes
  peft_lora_qv    PEFT LoRA r=8 (alpha 16, no dropout) on q_proj and v_proj, HF's loss (skipped without `peft`)
  fastmma         fastmma.patch(model, MMAConfig()) with its defaults (fused norm + adapter, lean RMSNorm,
                  recomputing SwiGLU, chunked LM head + loss, fused rotary embedding, on CPU the "fastmma"
                  attention, whose backward keeps no attention output, and recompute_attention: each layer
                  keeps its input, v, o_proj's output, gate, up and the attention's logsumexp, and
                  recomputes q and k in backward, with no attention forward)
  fastmma_no_recompute_attention   MMAConfig(recompute_attention=False) (opt-out): the layers keep what
                  their ops save (q, k, v, both norm inputs, gate, up, logsumexp), no recomputation
  fastmma_ckpt    the same + fastmma.checkpointing.enable_checkpointing (every decoder layer recomputed)
  fastmma_recompute_mlp   fastmma with MMAConfig(recompute_mlp=True) (opt-in): the MLP keeps only its input
                  and recomputes its gate and up projections in backward
Cases: SmolLM2-135M-Instruct fp32, B=4, L=256; one LLaMA-7B-sized decoder layer (hidden 4096, intermediate
11008, 32 heads, random weights) in bf16, B=1, L=512, inside a 1-layer LlamaForCausalLM with LLaMA's
32,000-word vocabulary. In the 7B case every variant is fed input embeddings that require grad, so that
its only layer keeps what an inner layer of the full model keeps (a first layer whose input needs no
gradient keeps less: HF's norm then saves no input).

Saved bytes come from fastmma.memory.measure (per decoder layer, each storage once, parameters
excluded; see its docstring); "per token per layer" is the median over layers of layer bytes / (B*L),
in KB = 1000 bytes. Logits: the saved tensors whose last dimension is the vocabulary; the most bytes of
tensors with a vocabulary-sized dimension alive at once while the LM head and the loss run
(fastmma.memory.live_logits), against the full fp32 logits [B*L, vocab]; and the peak memory allocated
over that span (a CPU memory profile: logits, the chunked loss's gradient [tokens, D], row indices).
Step time (SmolLM2): forward + loss + backward, variants interleaved step by step after warm-up.
With --keep-freed-memory glibc keeps freed memory in the process (benchmarks/timing.py): no step then
pays page faults for fresh memory, which otherwise weigh on the variants that allocate full logits.

    OMP_WAIT_POLICY=PASSIVE python3 benchmarks/memory.py --json memory.json --png memory.png
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import fastmma  # noqa: E402
from fastmma.checkpointing import enable_checkpointing  # noqa: E402
from fastmma.memory.estimate import estimate_memory  # noqa: E402
from fastmma.ops import backend, cpp_cross_entropy, cpp_swiglu  # noqa: E402
from fastmma.memory.measure import decoder_layers, measure_saved_bytes, peak_bytes_during  # noqa: E402
from fastmma.patching import cpu_attention  # noqa: E402
from fastmma.reference import LaVINAdapter  # noqa: E402
from timing import interleaved, keep_freed_memory, paired_ratio, summary  # noqa: E402  (benchmarks/timing.py)

KB = 1000
RANK, GROUPS, EXPERTS, SCALE, TEMPERATURE, DROPOUT = 8, 2, 2, 1.0, 10.0, 0.1


class LaVINLinearAdapter(LaVINAdapter):
    """LaVINAdapter's parameters and math with Linear / einsum instead of Conv1d (for bf16 on CPU).

    It saves the same tensors as the Conv1d form: the adapter input (for the down-projection's weight
    gradient), the dropout mask, h (for the up-projections' weight gradients) and, per expert, the scaled
    branch output (for the router's gradient).
    """

    def forward(self, normed: torch.Tensor) -> torch.Tensor:                       # [B, L, D]
        router_weights = torch.softmax(self.expert_router(normed[:, 0]) / self.temperature, dim=-1)   # [B, E]
        h = self.dropout(F.linear(normed, self.conv_down.weight[:, :, 0], self.conv_down.bias))     # [B, L, r]
        batch, length, rank = h.shape
        out = normed
        for expert, conv in enumerate(self.conv_up):
            weight = conv.weight[:, :, 0]                                           # [D, r/G]
            hidden, per_group = weight.shape
            groups = rank // per_group
            branch = torch.einsum("blgk,gdk->blgd", h.view(batch, length, groups, per_group),
                                  weight.view(groups, hidden // groups, per_group)).reshape(batch, length, hidden)
            out = out + (branch + conv.bias) * self.scale * router_weights[:, expert, None, None]
        return out


class LaVINStyleNorm(nn.Module):
    """The frozen HF RMSNorm followed by LaVIN's adapter, as LaVIN wraps the attention's input norm."""

    def __init__(self, norm: nn.Module, adapter: nn.Module):
        super().__init__()
        self.norm = norm
        self.adapter = adapter

    def forward(self, hidden_states):
        return self.adapter(self.norm(hidden_states))


def lavin_style(base, linear_form: bool):
    model = copy.deepcopy(base)
    model.requires_grad_(False)
    weight = model.get_input_embeddings().weight
    adapter_class = LaVINLinearAdapter if linear_form else LaVINAdapter
    torch.manual_seed(0)
    for layer in decoder_layers(model):
        adapter = adapter_class(model.config.hidden_size, RANK, GROUPS, EXPERTS, SCALE, TEMPERATURE, DROPOUT)
        layer.input_layernorm = LaVINStyleNorm(layer.input_layernorm, adapter.to(weight.device, weight.dtype))
    return model


def peft_lora(base):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        return None
    model = copy.deepcopy(base)
    model.requires_grad_(False)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))


RECOMPUTE_MLP = fastmma.MMAConfig(recompute_mlp=True)
NO_RECOMPUTE_ATTENTION = fastmma.MMAConfig(recompute_attention=False)


def variant_builders(base, ids, lavin_linear_form: bool, embeds_for_all: bool):
    """name -> a function building (model, forward kwargs); every model in training mode with a frozen base.

    embeds_for_all: every variant gets input embeddings that require grad (as the floor always does), so that
    layer 0 keeps what an inner layer keeps (for the one-layer 7B case)."""
    labels = ids.clone()
    embeds = base.get_input_embeddings()(ids).detach().requires_grad_()
    inputs = dict(inputs_embeds=embeds) if embeds_for_all else dict(input_ids=ids)

    def floor():
        model = copy.deepcopy(base).requires_grad_(False)
        return model, dict(inputs_embeds=embeds, labels=labels)

    def patched(checkpointing, config=None):
        def build():
            model = fastmma.patch(copy.deepcopy(base), config or fastmma.MMAConfig())
            if checkpointing:
                enable_checkpointing(model)
            return model, dict(inputs, labels=labels, modality=0)
        return build

    builders = {"hf_no_adapter": floor,
                "lavin_style": lambda: (lavin_style(base, lavin_linear_form), dict(inputs, labels=labels))}
    try:
        import peft  # noqa: F401
        builders["peft_lora_qv"] = lambda: (peft_lora(base), dict(inputs, labels=labels))
    except ImportError:
        print("peft is not installed: skipping peft_lora_qv (pip install peft, or pip install -e .[bench])")
    builders["fastmma"] = patched(False)
    builders["fastmma_no_recompute_attention"] = patched(False, NO_RECOMPUTE_ATTENTION)
    builders["fastmma_ckpt"] = patched(True)
    builders["fastmma_recompute_mlp"] = patched(False, RECOMPUTE_MLP)
    return builders


def build(builder):
    model, kwargs = builder()
    return model.train(), kwargs


def measure_variant(model, kwargs) -> dict:
    torch.manual_seed(0)
    result = measure_saved_bytes(model, lambda: model(**kwargs).loss, profile_loss=True)
    return {"num_layers": len(result.layers), "tokens": result.tokens,
            "per_token_per_layer_bytes": result.per_token_per_layer("storage"),
            "per_token_per_layer_tensor_bytes": result.per_token_per_layer("tensor"),
            "kb_per_token_per_layer": result.per_token_per_layer("storage") / KB,
            "layers_storage_bytes": [layer.storage_bytes for layer in result.layers],
            "outside_bytes": result.outside.storage_bytes, "head_and_loss_bytes": result.head_and_loss.storage_bytes,
            # the most logits (tensors with a vocab-sized dimension) alive at once while the head + loss ran
            "logits_peak_bytes": result.peak_logits_bytes,
            "other_layer_calls_bytes": result.other_layer_calls.storage_bytes,
            "logits_saved_bytes": result.vocab_sized.storage_bytes, "peak_loss_bytes": result.peak_loss_bytes,
            "total_saved_bytes": result.total("storage"), "total_saved_tensor_bytes": result.total("tensor"),
            "layer_1_tensors" if len(result.layers) > 1 else "layer_0_tensors":
                result.layer_tensors(1 if len(result.layers) > 1 else 0)}


def run_case(name, base, ids, lavin_linear_form, check_conv_form=False, embeds_for_all=False, keep=True) -> dict:
    """Measure every variant; keep=False builds and frees them one at a time (returns no models)."""
    config = base.config
    dtype = base.get_input_embeddings().weight.dtype
    tokens = ids.numel()
    builders = variant_builders(base, ids, lavin_linear_form, embeds_for_all)
    variants, rows = {}, {}
    for variant, builder in builders.items():
        model, kwargs = build(builder)
        rows[variant] = measure_variant(model, kwargs)
        if keep:
            variants[variant] = (model, kwargs)
        del model
        row = rows[variant]
        print(f"{name:30s} {variant:14s} {row['kb_per_token_per_layer']:7.2f} KB/token/layer "
              f"(tensor bytes {row['per_token_per_layer_tensor_bytes'] / KB:7.2f}); outside layers "
              f"{(row['outside_bytes'] + row['head_and_loss_bytes']) / 2**20:7.1f} MiB; logits saved "
              f"{row['logits_saved_bytes'] / 2**20:7.1f} MiB, peak during head+loss {row['peak_loss_bytes'] / 2**20:7.1f}"
              f" MiB (logits part {row['logits_peak_bytes'] / 2**20:.1f} MiB)", flush=True)
    full_logits = tokens * config.vocab_size * 4
    out = {"model": {"hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
                     "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
                     "num_key_value_heads": config.num_key_value_heads, "vocab_size": config.vocab_size,
                     "dtype": str(dtype).replace("torch.", "")},
           "batch": ids.shape[0], "seq_len": ids.shape[1], "full_logits_fp32_bytes": full_logits,
           "variants": rows}
    if check_conv_form:
        linear = measure_variant(lavin_style(base, linear_form=True).train(), dict(input_ids=ids, labels=ids.clone()))
        out["lavin_style_linear_form_kb_per_token_per_layer"] = linear["kb_per_token_per_layer"]
    lavin, lean, ckpt = (rows[k]["per_token_per_layer_bytes"] for k in ("lavin_style", "fastmma", "fastmma_ckpt"))
    out["ratios"] = {
        "fastmma_over_lavin_style": lean / lavin, "fastmma_ckpt_over_lavin_style": ckpt / lavin,
        "fastmma_over_floor": lean / rows["hf_no_adapter"]["per_token_per_layer_bytes"],
        "fastmma_no_recompute_attention_over_lavin_style":
            rows["fastmma_no_recompute_attention"]["per_token_per_layer_bytes"] / lavin,
        "fastmma_recompute_mlp_over_lavin_style": rows["fastmma_recompute_mlp"]["per_token_per_layer_bytes"] / lavin,
        "fastmma_logits_peak_over_full_logits": rows["fastmma"]["logits_peak_bytes"] / full_logits,
        "fastmma_head_loss_peak_over_full_logits": rows["fastmma"]["peak_loss_bytes"] / full_logits,
        "floor_logits_peak_over_full_logits": rows["hf_no_adapter"]["logits_peak_bytes"] / full_logits,
    }
    out["estimate_vs_measured"] = {}
    for variant, checkpointing, mma_config in (("fastmma", False, fastmma.MMAConfig()),
                                               ("fastmma_no_recompute_attention", False, NO_RECOMPUTE_ATTENTION),
                                               ("fastmma_ckpt", True, fastmma.MMAConfig()),
                                               ("fastmma_recompute_mlp", False, RECOMPUTE_MLP)):
        estimate = estimate_memory(config, ids.shape[0], ids.shape[1], dtype, checkpointing, mma_config,
                                   gpu_overhead=False, fused_loss=cpp_cross_entropy.applies(torch.device("cpu"), dtype),
                                   fused_attention=cpu_attention.available())
        measured = rows[variant]
        out["estimate_vs_measured"][variant] = {
            "per_token_per_layer_bytes": [estimate.saved_per_token_per_layer_kept, measured["per_token_per_layer_bytes"]],
            "total_saved_bytes": [estimate.activation_bytes, measured["total_saved_bytes"]],
            "ratio_total_saved": estimate.activation_bytes / measured["total_saved_bytes"],
            "logits_bytes": [estimate.logits_chunk_bytes, measured["logits_peak_bytes"]],
        }
    sanity_checks(name, out)
    return out, variants


def sanity_checks(name, case) -> None:
    """Fail loudly on results that cannot be right."""
    rows = case["variants"]
    layers = case["model"]["num_hidden_layers"]
    problems = []
    for variant, row in rows.items():
        if row["num_layers"] != layers:
            problems.append(f"{variant} measured {row['num_layers']} layers, the model has {layers}")
        if row["tokens"] != case["batch"] * case["seq_len"]:
            problems.append(f"{variant}: the layers' main calls saw {row['tokens']} tokens")
    floor = rows["hf_no_adapter"]["per_token_per_layer_bytes"]
    for variant in ("lavin_style", "peft_lora_qv"):
        if variant in rows and rows[variant]["per_token_per_layer_bytes"] < floor:
            problems.append(f"{variant} keeps less than the no-adapter floor ({rows[variant]['per_token_per_layer_bytes']}"
                            f" < {floor} bytes/token/layer): adapters only add")
    if rows["fastmma"]["logits_saved_bytes"] != 0:
        problems.append("fastmma kept logits-sized tensors although the chunked loss is on")
    if rows["hf_no_adapter"]["logits_saved_bytes"] < case["full_logits_fp32_bytes"]:
        problems.append("the floor should keep the log-softmax of the full logits")
    hidden_bytes = case["model"]["hidden_size"] * (2 if case["model"]["dtype"] == "bfloat16" else 4)
    final_norm_input = hidden_bytes * case["batch"] * case["seq_len"]
    if rows["fastmma"]["outside_bytes"] <= final_norm_input:
        problems.append("fastmma keeps no more outside the layers than its final norm's input: its modality pass "
                        "(filed outside the layers) was not seen")
    if rows["fastmma_ckpt"]["per_token_per_layer_bytes"] != hidden_bytes:
        problems.append(f"checkpointed layers should keep only their input ({hidden_bytes} bytes/token), got "
                        f"{rows['fastmma_ckpt']['per_token_per_layer_bytes']}")
    for variant, row in rows.items():
        # Layer 0 may keep less: where its input needs no gradient (frozen embeddings), HF's norm keeps no input.
        later = row["layers_storage_bytes"][1:]
        if later and max(later) - min(later) > 0.01 * max(later):
            problems.append(f"{variant}: layers 1.. differ by {max(later) - min(later)} bytes (a uniform stack "
                            f"should not)")
    conv_linear = case.get("lavin_style_linear_form_kb_per_token_per_layer")
    if conv_linear is not None and abs(conv_linear - rows["lavin_style"]["kb_per_token_per_layer"]) > \
            0.01 * rows["lavin_style"]["kb_per_token_per_layer"]:
        problems.append(f"LaVIN's Conv1d and Linear forms keep different bytes ({rows['lavin_style']['kb_per_token_per_layer']}"
                        f" vs {conv_linear} KB/token/layer)")
    if problems:
        raise SystemExit(f"{name}: sanity check failed:\n  " + "\n  ".join(problems))


def training_step(model, kwargs):
    def step():
        model.zero_grad(set_to_none=True)
        if kwargs.get("inputs_embeds") is not None:
            kwargs["inputs_embeds"].grad = None
        model(**kwargs).loss.backward()

    return step


def time_steps(variants, rounds, warmup) -> dict:
    times = interleaved({name: training_step(*variants[name]) for name in variants}, rounds, warmup)
    out = {name: summary(seconds) for name, seconds in times.items()}
    floor = out["hf_no_adapter"]["median_ms"]
    ratios = {f"{name}_over_floor": row["median_ms"] / floor for name, row in out.items()}
    ratios["fastmma_ckpt_over_fastmma"] = out["fastmma_ckpt"]["median_ms"] / out["fastmma"]["median_ms"]
    # The same round's steps against each other: the machine's drift between rounds cancels.
    paired = {f"{name}_over_floor": paired_ratio(seconds, times["hf_no_adapter"]) for name, seconds in times.items()
              if name != "hf_no_adapter"}
    for name, row in out.items():
        pair = paired.get(f"{name}_over_floor")
        pair_text = f"; per round {pair['median']:.3f}x (IQR {pair['q1']:.3f}-{pair['q3']:.3f})" if pair else ""
        print(f"step {name:14s} median {row['median_ms']:8.1f} ms (IQR {row['q1_ms']:.1f}-{row['q3_ms']:.1f}, "
              f"min {row['min_ms']:.1f}, max {row['max_ms']:.1f}) = {ratios[name + '_over_floor']:.3f}x floor"
              f"{pair_text}", flush=True)
    return {"per_variant": out, "ratios": ratios, "paired_ratios": paired,
            "seconds": {name: list(seconds) for name, seconds in times.items()}}


def static_bytes(model, optimizer=None) -> int:
    """Bytes of the model's parameters and buffers and of the optimizer's states, each storage once."""
    storages = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    for state in (optimizer.state.values() if optimizer is not None else ()):
        for value in state.values():
            if torch.is_tensor(value):
                storages[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    return sum(storages.values())


def peak_training_memory(model, kwargs, ids, checkpointing) -> dict:
    """Measured CPU peak of one AdamW training step (weights, adapter states, activations, transients) vs the
    estimate without the GPU-only allowance."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        model(**kwargs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()                                                      # creates the AdamW states
    static = static_bytes(model, optimizer)
    _, dynamic = peak_bytes_during(step)
    dtype = model.get_input_embeddings().weight.dtype
    estimate = estimate_memory(model.config, ids.shape[0], ids.shape[1], dtype, checkpointing, fastmma.MMAConfig(),
                               gpu_overhead=False, fused_swiglu=backend.has_implementation(cpp_swiglu.OP_SWIGLU, "cpu"),
                               fused_loss=cpp_cross_entropy.applies(torch.device("cpu"), dtype),
                               fused_attention=model.config._attn_implementation == cpu_attention.NAME)
    measured = static + dynamic
    return {"measured_peak_bytes": measured, "measured_static_bytes": static,
            "estimated_peak_allocated_bytes": estimate.peak_allocated_bytes,
            "ratio": estimate.peak_allocated_bytes / measured}


def smollm2_case(args) -> dict:
    from fastmma.models import load_default_llm

    base, _ = load_default_llm()
    ids = torch.randint(0, base.config.vocab_size, (4, 256), generator=torch.Generator().manual_seed(0))
    case, variants = run_case("SmolLM2-135M fp32 B=4 L=256", base, ids, lavin_linear_form=False, check_conv_form=True)
    case["peak_training_memory"] = {}
    for variant, checkpointing in (("fastmma", False), ("fastmma_ckpt", True)):
        case["peak_training_memory"][variant] = row = peak_training_memory(*variants[variant], ids, checkpointing)
        print(f"peak of a training step, {variant}: measured {row['measured_peak_bytes'] / 2**20:.1f} MiB, "
              f"estimated {row['estimated_peak_allocated_bytes'] / 2**20:.1f} MiB ({row['ratio']:.3f}x)", flush=True)
    if not args.skip_timing:
        case["step_time"] = time_steps(variants, args.rounds, args.warmup)
    return case


def llama7b_layer_case(args) -> dict:
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                         num_hidden_layers=1, vocab_size=32000, max_position_embeddings=2048)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).to(torch.bfloat16)
    ids = torch.randint(0, config.vocab_size, (1, args.seq_len_7b), generator=torch.Generator().manual_seed(0))
    case, _ = run_case(f"LLaMA-7B layer bf16 B=1 L={args.seq_len_7b}", base, ids, lavin_linear_form=True,
                       embeds_for_all=True, keep=False)
    return case


TARGETS = (
    ("SmolLM2: fastmma / LaVIN-style saved bytes per token per layer", "smollm2", ("ratios", "fastmma_over_lavin_style"), 0.5),
    ("7B layer: fastmma / LaVIN-style saved bytes per token per layer", "llama7b", ("ratios", "fastmma_over_lavin_style"), 0.5),
    ("7B layer: fastmma KB per token per layer", "llama7b", ("variants", "fastmma", "kb_per_token_per_layer"), 78.0),
    ("SmolLM2: fastmma logits memory (peak during head+loss, logits part) / full fp32 logits", "smollm2",
     ("ratios", "fastmma_logits_peak_over_full_logits"), 1 / 8),
    ("7B layer: fastmma logits memory (logits part) / full fp32 logits", "llama7b",
     ("ratios", "fastmma_logits_peak_over_full_logits"), 1 / 8),
    ("SmolLM2: fastmma step time / no-adapter floor", "smollm2", ("step_time", "ratios", "fastmma_over_floor"), 1.0),
    ("SmolLM2: fastmma+checkpointing / LaVIN-style saved bytes", "smollm2", ("ratios", "fastmma_ckpt_over_lavin_style"), 0.1),
    ("7B layer: fastmma+checkpointing / LaVIN-style saved bytes", "llama7b", ("ratios", "fastmma_ckpt_over_lavin_style"), 0.1),
    ("SmolLM2: fastmma+checkpointing step time / no-adapter floor", "smollm2",
     ("step_time", "ratios", "fastmma_ckpt_over_floor"), 1.4),
    ("SmolLM2: fastmma(recompute_attention=False) / LaVIN-style saved bytes (opt-out)", "smollm2",
     ("ratios", "fastmma_no_recompute_attention_over_lavin_style"), 0.5),
    ("7B layer: fastmma(recompute_attention=False) / LaVIN-style saved bytes (opt-out)", "llama7b",
     ("ratios", "fastmma_no_recompute_attention_over_lavin_style"), 0.5),
    ("SmolLM2: fastmma(recompute_attention=False) step time / no-adapter floor (opt-out)", "smollm2",
     ("step_time", "ratios", "fastmma_no_recompute_attention_over_floor"), 1.0),
    ("SmolLM2: fastmma(recompute_mlp) / LaVIN-style saved bytes (opt-in)", "smollm2",
     ("ratios", "fastmma_recompute_mlp_over_lavin_style"), 0.5),
    ("7B layer: fastmma(recompute_mlp) / LaVIN-style saved bytes (opt-in)", "llama7b",
     ("ratios", "fastmma_recompute_mlp_over_lavin_style"), 0.5),
    ("7B layer: fastmma(recompute_mlp) KB per token per layer (opt-in)", "llama7b",
     ("variants", "fastmma_recompute_mlp", "kb_per_token_per_layer"), 78.0),
    ("SmolLM2: fastmma(recompute_mlp) step time / no-adapter floor (opt-in)", "smollm2",
     ("step_time", "ratios", "fastmma_recompute_mlp_over_floor"), 1.0),
)


def check_targets(results) -> list[dict]:
    rows = []
    for label, case, path, limit in TARGETS:
        value = results["cases"].get(case)
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            continue
        rows.append({"target": label, "value": value, "limit": limit, "met": value <= limit})
        print(f"{'MET   ' if value <= limit else 'MISSED'} {label}: {value:.3f} (target <= {limit:.3f})")
    return rows


def draw(results, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(results["cases"].items())
    with_time = "step_time" in results["cases"].get("smollm2", {})
    figure, axes = plt.subplots(1, len(cases) + with_time, figsize=(5.5 * (len(cases) + with_time), 4.2))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    for axis, (case_name, case) in zip(axes, cases):
        names = list(case["variants"])
        values = [case["variants"][n]["kb_per_token_per_layer"] for n in names]
        bars = axis.bar(names, values, color=["#888", "#c44", "#c84", "#48c", "#8ac", "#4a4", "#4aa"][:len(names)])
        axis.bar_label(bars, fmt="%.1f", fontsize=8)
        axis.axhline(0.5 * case["variants"]["lavin_style"]["kb_per_token_per_layer"], ls="--", color="k", lw=0.8,
                     label="0.5x LaVIN-style (target)")
        model = case["model"]
        axis.set_title(f"{case_name}: {model['dtype']}, B={case['batch']}, L={case['seq_len']}", fontsize=9)
        axis.set_ylabel("KB saved for backward / token / layer")
        axis.tick_params(axis="x", rotation=30, labelsize=8)
        axis.legend(fontsize=8)
    if with_time:
        axis = axes[-1]
        timing = results["cases"]["smollm2"]["step_time"]["per_variant"]
        names = list(timing)
        medians = [timing[n]["median_ms"] for n in names]
        errors = [[timing[n]["median_ms"] - timing[n]["min_ms"] for n in names],
                  [timing[n]["max_ms"] - timing[n]["median_ms"] for n in names]]
        axis.bar(names, medians, yerr=errors, capsize=3, color="#777")
        axis.set_title("SmolLM2 training step (median, min-max)", fontsize=9)
        axis.set_ylabel("ms")
        axis.tick_params(axis="x", rotation=30, labelsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--png", default=None, help="draw the chart here")
    parser.add_argument("--skip-7b", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--rounds", type=int, default=10, help="timed training steps per variant (>= 10)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seq-len-7b", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc: keep freed memory in the process (no page faults for fresh memory in a step)")
    args = parser.parse_args(argv)
    if args.rounds < 10:
        parser.error("--rounds must be at least 10")
    allocator = keep_freed_memory() if args.keep_freed_memory else "default (glibc returns large frees to the OS)"
    torch.set_num_threads(args.threads)
    started = time.time()
    results = {"date": datetime.date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} CPUs", "threads": args.threads, "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
               "torch": torch.__version__, "transformers": transformers.__version__, "allocator": allocator,
               "command": "python3 " + " ".join(sys.argv), "kb": KB, "cases": {}}
    results["cases"]["smollm2"] = smollm2_case(args)
    if not args.skip_7b:
        results["cases"]["llama7b"] = llama7b_layer_case(args)
    results["targets"] = check_targets(results)
    results["seconds"] = time.time() - started
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    if args.png:
        draw(results, args.png)
    return results


if __name__ == "__main__":
    main()
