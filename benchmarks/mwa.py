"""MultiWay-Adapter vs full fine-tuning of the same BEiT-3 dual encoder.

Measures, in one run:
- training-step time (forward + backward + AdamW) of both, interleaved step by step
  (alternating which goes first), as median and spread over the timed repeats;
- bytes saved for backward by one training forward (saved_tensors_hooks), each storage
  counted once, with the parameters' own storages reported apart from activations;
- the trainable-parameter share of MWA at BEiT-3 Base and Large sizes (built on the meta
  device, so nothing is allocated).

    python benchmarks/mwa.py                      # the small default config, 2 threads
    python benchmarks/mwa.py --embed-dim 768 --layers 12 --heads 12 --ffn-dim 3072 --out mwa.json

Needs torchscale: pip install --no-deps torchscale==0.3.0 fairscale==0.4.0
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

import torch

import fastmma
from fastmma.atomic import write_json_atomic
from fastmma.mwa import MWAConfig, adapter_parameters
from fastmma.mwa.beit3 import BEIT3_BASE, BEIT3_LARGE, BEiT3Dims, build_beit3
from fastmma.mwa.retrieval import DualEncoder


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embed-dim", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn-dim", type=int, default=768)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--text-length", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def build_pair(dims: BEiT3Dims, config: MWAConfig) -> dict[str, DualEncoder]:
    """The same randomly initialised dual encoder twice: MWA-patched, and fully trainable."""
    models = {}
    for name in ("mwa", "full"):
        torch.manual_seed(0)
        model = DualEncoder(build_beit3(dims)).train()
        if name == "mwa":
            fastmma.patch(model.beit3, config)
        models[name] = model
    return models


def make_batch(args, generator: torch.Generator):
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    token_ids = torch.randint(0, args.vocab_size, (args.batch_size, args.text_length), generator=generator)
    padding_mask = torch.zeros(args.batch_size, args.text_length, dtype=torch.bool)
    return images, token_ids, padding_mask


def training_step(model: DualEncoder, optimizer: torch.optim.Optimizer, batch) -> float:
    """One optimizer step; returns its wall time in seconds."""
    started = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    model(*batch).backward()
    optimizer.step()
    return time.perf_counter() - started


def time_interleaved(models: dict[str, DualEncoder], batch, warmup: int, repeats: int) -> dict[str, list[float]]:
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                  for name, m in models.items()}
    times = {name: [] for name in models}
    names = list(models)
    for repeat in range(warmup + repeats):
        for name in (names if repeat % 2 == 0 else names[::-1]):
            elapsed = training_step(models[name], optimizers[name], batch)
            if repeat >= warmup:
                times[name].append(elapsed)
    return times


def saved_for_backward_bytes(model: DualEncoder, batch) -> dict[str, int]:
    """Bytes of the distinct storages autograd saves in one forward: activations, and parameters apart."""
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(*batch)
    del loss
    activations = sum(size for ptr, size in storages.items() if ptr not in parameter_storages)
    parameters = sum(size for ptr, size in storages.items() if ptr in parameter_storages)
    return {"activations": activations, "parameters": parameters}


def spread(samples: list[float]) -> dict[str, float]:
    quartiles = statistics.quantiles(samples, n=4)
    return {"median_ms": 1e3 * statistics.median(samples), "p25_ms": 1e3 * quartiles[0],
            "p75_ms": 1e3 * quartiles[2], "min_ms": 1e3 * min(samples), "max_ms": 1e3 * max(samples)}


def parameter_share(dims: BEiT3Dims, config: MWAConfig) -> dict[str, float]:
    """MWA parameters against the BEiT-3 backbone, counted on the meta device."""
    with torch.device("meta"):
        model = build_beit3(dims)
        base = sum(p.numel() for p in model.parameters())
        fastmma.patch(model, config)
        added = sum(p.numel() for p in adapter_parameters(model).values())
    return {"base_params": base, "mwa_params": added, "mwa_percent_of_base": 100.0 * added / base,
            "trainable_percent_of_patched": 100.0 * added / (base + added)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = MWAConfig()
    dims = BEiT3Dims(embed_dim=args.embed_dim, layers=args.layers, heads=args.heads, ffn_dim=args.ffn_dim,
                     img_size=args.image_size, patch_size=args.patch_size, vocab_size=args.vocab_size,
                     max_source_positions=args.text_length + 2)
    models = build_pair(dims, config)
    batch = make_batch(args, torch.Generator().manual_seed(0))
    times = time_interleaved(models, batch, args.warmup, args.repeats)
    result = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()} CPU, {args.threads} threads",
        "torch": torch.__version__, "config": vars(args), "mwa_config": config.to_dict(),
        "step_time": {name: spread(samples) for name, samples in times.items()},
        "saved_for_backward_bytes": {name: saved_for_backward_bytes(m, batch) for name, m in models.items()},
        "trainable": {name: fastmma.trainable_parameters(m) for name, m in models.items()},
        "parameter_share": {"base": parameter_share(BEIT3_BASE, config), "large": parameter_share(BEIT3_LARGE, config)},
    }
    print(report(result))
    if args.out:
        write_json_atomic(args.out, result)
    return result


def report(result: dict) -> str:
    lines = [f"{result['date']}, {result['machine']}, torch {result['torch']}"]
    for name, stats in result["step_time"].items():
        saved = result["saved_for_backward_bytes"][name]
        trainable, total = result["trainable"][name]
        lines.append(f"{name:>4}: step {stats['median_ms']:.1f} ms (IQR {stats['p25_ms']:.1f}-{stats['p75_ms']:.1f}, "
                     f"range {stats['min_ms']:.1f}-{stats['max_ms']:.1f}); saved activations "
                     f"{saved['activations'] / 2**20:.1f} MiB (+ {saved['parameters'] / 2**20:.1f} MiB parameters); "
                     f"trainable {trainable:,} / {total:,}")
    mwa, full = result["step_time"]["mwa"]["median_ms"], result["step_time"]["full"]["median_ms"]
    lines.append(f"MWA step time is {100 * (1 - mwa / full):.0f}% below full fine-tuning")
    for size, share in result["parameter_share"].items():
        lines.append(f"BEiT-3 {size}: MWA adds {share['mwa_params']:,} to {share['base_params']:,} parameters "
                     f"({share['mwa_percent_of_base']:.2f}% of the backbone)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
