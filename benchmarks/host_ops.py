"""Host cost of a training step: aten ops per step and the step's time on a model too small to compute.

    python3 benchmarks/host_ops.py                       # torch backends + SDPA: the ops a CUDA step issues
    python3 benchmarks/host_ops.py --backend auto --attn auto     # this CPU's own path (C++ kernels)

A LLaMA of 30 layers with hidden size 64 (B=2, L=16): every op is tiny, so the step's time is what the
host spends issuing ops. On a GPU each op is a kernel launch plus Python around it, which is why the ops
per step bound a small model's step time there. Counted with a TorchDispatchMode (every aten op,
forward and backward; the modality pass separately); time: median of 15 steps (forward, loss,
backward, AdamW) after 3 warm-up steps, one thread. Variants: the Hugging Face model alone (the floor,
input embeddings requiring grad), fastmma's defaults and recompute_attention=False.
"""
from __future__ import annotations

import argparse
import collections
import copy
import os
import statistics
import time


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch", help="FASTMMA_BACKEND for the run (torch: the CUDA path's ops)")
    parser.add_argument("--attn", default="sdpa", help="MMAConfig.attn_implementation")
    parser.add_argument("--rounds", type=int, default=15)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ["FASTMMA_BACKEND"] = args.backend
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import LlamaConfig, LlamaForCausalLM

    import fastmma
    from fastmma.patching import routing

    class OpCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=30, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    base = LlamaForCausalLM(config).requires_grad_(False)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))

    def variant(name):
        if name == "floor":
            embeds = base.get_input_embeddings()(ids).detach().requires_grad_()
            return copy.deepcopy(base), dict(inputs_embeds=embeds, labels=ids)
        mma = fastmma.MMAConfig(attn_implementation=args.attn,
                                **({"recompute_attention": False} if name == "no_recompute_attention" else {}))
        return fastmma.patch(copy.deepcopy(base), mma), dict(input_ids=ids, labels=ids, modality=0)

    results = {}
    for name in ("floor", "fastmma", "no_recompute_attention"):
        model, kwargs = variant(name)
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable) if trainable else None

        def step():
            model(**kwargs).loss.backward()
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        seconds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
        modality = OpCounter()
        run_modality_pass = routing.RoutingContext._run_modality_pass

        def counted_modality_pass(context, patched):
            with modality:
                run_modality_pass(context, patched)

        routing.RoutingContext._run_modality_pass = counted_modality_pass
        try:
            with OpCounter() as forward:
                loss = model(**kwargs).loss
            with OpCounter() as backward:
                loss.backward()
        finally:
            routing.RoutingContext._run_modality_pass = run_modality_pass
        row = results[name] = {"forward_ops": sum(forward.ops.values()), "modality_pass_ops": sum(modality.ops.values()),
                               "backward_ops": sum(backward.ops.values()), "step_ms": statistics.median(seconds) * 1e3}
        print(f"{name:24s} {row['forward_ops'] + row['backward_ops']:6d} aten ops per step (forward {row['forward_ops']}, "
              f"of which the modality pass {row['modality_pass_ops']}; backward {row['backward_ops']}); "
              f"step {row['step_ms']:.1f} ms", flush=True)
    return results


if __name__ == "__main__":
    main()
