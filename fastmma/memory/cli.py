"""`fastmma memory`: predicted peak training memory on a GPU (fastmma.memory.estimate)."""
from __future__ import annotations

import json
import math

LAVIN_REPORTED_GB = {"llama-7b": 33.9, "llama-13b": 55.9}     # LaVIN paper's training memory


def add_memory_subcommand(commands) -> None:
    parser = commands.add_parser("memory", help="predict peak GPU training memory of fastmma for a model")
    parser.add_argument("--model", required=True,
                        help="a preset (llama-7b, llama-13b, smollm2-135m), a config.json or a folder holding one")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8, 32], help="batch sizes")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--dtype", default="bf16", help="dtype of the frozen base: bf16, fp16 or fp32")
    parser.add_argument("--gpu-gib", type=float, default=24.0, help="GPU memory to check the fit against (GiB)")
    parser.add_argument("--every-n-layers", type=int, default=2,
                        help="also show checkpointing of every n-th layer only (1: just none and all)")
    parser.add_argument("--adapter", default=None, help="MMAConfig fields as JSON, e.g. '{\"rank\": 16}'")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run_memory)


def run_memory(args) -> int:
    from ..config import MMAConfig
    from .estimate import memory_table

    config = MMAConfig.from_dict(json.loads(args.adapter)) if args.adapter else MMAConfig()
    if min(args.batch) < 1 or args.seq_len < 1 or args.every_n_layers < 1:
        raise ValueError("--batch, --seq-len and --every-n-layers must be positive")
    if not math.isfinite(args.gpu_gib) or args.gpu_gib <= 0:
        raise ValueError(f"--gpu-gib must be a positive number of GiB; got {args.gpu_gib}")
    rows = memory_table(args.model, args.batch, args.seq_len, args.dtype, config, gpu_gib=args.gpu_gib,
                        every_n_layers=args.every_n_layers)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"fastmma training memory, {args.model}, {args.dtype} base, {args.seq_len} tokens per sequence, "
          f"adapters rank {config.rank} on {'+'.join(config.targets)} (fp32, AdamW)")
    print(f"{'batch':>5} {'checkpointing':>13} {'peak GiB':>9} {'weights':>8} {'activations':>11} "
          f"{'KB/token/layer':>14}  fits {args.gpu_gib:g} GiB")
    for row in rows:
        print(f"{row['batch']:>5} {_checkpointing_label(row):>13} {row['peak_gib']:>9.1f} "
              f"{row['weights_gib']:>8.1f} {row['activations_gib']:>11.1f} {row['saved_kb_per_token_per_layer']:>14.1f}"
              f"  {'yes' if row['fits'] else 'no'}")
    reported = LAVIN_REPORTED_GB.get(str(args.model).lower())
    if reported:
        print(f"(LaVIN's paper reports {reported} GB of training memory for this model)")
    return 0


def _checkpointing_label(row: dict) -> str:
    if not row["checkpointing"]:
        return "no"
    return "all" if row["every_n_layers"] == 1 else f"{row['checkpointed_layers']} of {row['num_layers']}"
