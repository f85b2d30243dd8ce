"""The `fastmma` command line."""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="fastmma", description="Mixture-of-Modality adapters for LLaMA-family models")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="offline demo: patch the embedded SmolLM2, fine-tune, generate")
    demo.add_argument("--out", default="demo-out", help="output folder (adapters, metrics.json, loss.png)")
    demo.add_argument("--steps", type=int, default=40)
    demo.add_argument("--seed", type=int, default=0)

    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.out, steps=args.steps, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
