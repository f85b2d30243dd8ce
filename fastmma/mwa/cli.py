"""`fastmma retrieval`: MWA-tune a tiny BEiT-3 on the synthetic shapes set and print Recall@K."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import write_json_atomic
from ..cli import positive_float, positive_int
from .retrieval_experiment import RetrievalSetup, run

DIRECTIONS = (("i2t", "image->text"), ("t2i", "text->image"))
KS = (1, 5, 10)


def add_retrieval_subcommand(subparsers) -> argparse.ArgumentParser:
    """Register `retrieval` on the `fastmma` command's subparsers."""
    defaults = RetrievalSetup()
    parser = subparsers.add_parser(
        "retrieval", help="offline MultiWay-Adapter demo: image-text retrieval with a tiny BEiT-3 "
                          "(needs torchscale: pip install --no-deps torchscale==0.3.0 fairscale==0.4.0)")
    parser.add_argument("--steps", type=positive_int, default=defaults.steps)
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--lr", type=positive_float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", default=None, help="optional JSON file for the recalls and the loss curve")
    parser.set_defaults(run=run_retrieval)
    return parser


def run_retrieval(args: argparse.Namespace) -> int:
    if args.out:
        _check_new_output_file(Path(args.out))
    setup = RetrievalSetup(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed)
    result = run(setup)
    print(f"tiny BEiT-3 (D={setup.embed_dim}, {setup.layers} layers, {setup.image_size}px), {result['scenes']} "
          f"scenes, {setup.steps} steps; trainable {result['trainable']:,} of {result['total']:,} parameters")
    print(recall_table(result["before"], result["after"]))
    print(f"loss {result['losses'][0]:.3f} -> {result['losses'][-1]:.3f} in {result['seconds']:.0f} s")
    if args.out:
        write_json_atomic(Path(args.out), result)
    return 0


def _check_new_output_file(path: Path) -> None:
    from ..train import check_output_folder

    if path.exists():
        raise ValueError(f"--out {path} already exists; give the path of a new file (an existing one is not "
                         f"overwritten)")
    check_output_folder(path.parent, "the folder of --out")


def recall_table(before: dict[str, float], after: dict[str, float]) -> str:
    rows = [f"{'Recall (%)':<20}" + "".join(f"{'R@' + str(k):>8}" for k in KS)]
    for key, label in DIRECTIONS:
        for stage, recalls in (("before", before), ("after", after)):
            rows.append(f"{label + ' ' + stage:<20}" + "".join(f"{recalls[f'{key}@{k}']:>8.1f}" for k in KS))
    return "\n".join(rows)
