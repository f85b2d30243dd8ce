"""The `fastmma` command line: demo, train, generate, eval."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

TRAIN_SPEC_KEYS = ("models", "data", "train")          # and optionally "lavin"
MODEL_KEYS = ("llm", "vision")
DATA_OPTION = "--data must be a JSON data spec or the path of a .json file holding one"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError, KeyError, ModuleNotFoundError) as err:
        print(f"fastmma {args.command}: error: {err}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastmma", description="Mixture-of-Modality adapters (LaVIN) and "
                                                                 "MultiWay adapters for vision-language tuning")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="offline demo: LaVIN on SmolLM2 + a small ViT, trained on ShapesQA")
    demo.add_argument("--out", default="demo-out", help="output folder (metrics.json, loss.png, adapters/)")
    demo.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default: the demo's setting)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of the training data, its order and the held-out questions (default 0)")
    demo.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                      help="training precision (default: the demo's setting, bf16 autocast)")
    demo.set_defaults(run=_demo)

    train = commands.add_parser("train", help="train LaVIN from a JSON config file")
    train.add_argument("--config", required=True, help="JSON with \"models\", \"data\", \"train\", \"lavin\"")
    train.add_argument("--no-resume", action="store_true", help="start over even if out_dir has checkpoints")
    train.set_defaults(run=_train)

    generate = commands.add_parser("generate", help="answer a prompt (with an image) with trained adapters")
    generate.add_argument("--adapters", required=True, help="a folder written by LaVIN.save_pretrained")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--image", default=None, help="an image file (omit for a text-only prompt)")
    generate.add_argument("--max-new-tokens", type=positive_int, default=32)
    generate.set_defaults(run=_generate)

    evaluate = commands.add_parser("eval", help="exact-match accuracy of trained adapters on a data spec")
    evaluate.add_argument("--adapters", required=True)
    evaluate.add_argument("--data", required=True, help="a data spec as JSON text or a .json file "
                                                        "(see fastmma/data/sources.py)")
    evaluate.add_argument("--max-new-tokens", type=positive_int, default=8)
    evaluate.set_defaults(run=_eval)

    from .mwa.cli import add_retrieval_subcommand

    add_retrieval_subcommand(commands)
    from .memory.cli import add_memory_subcommand

    add_memory_subcommand(commands)
    return parser


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _demo(args) -> int:
    from .demo import DemoSettings, run_demo

    chosen = {"steps": args.steps, "precision": args.precision}
    settings = DemoSettings(seed=args.seed, **{name: value for name, value in chosen.items() if value is not None})
    run_demo(args.out, settings)
    return 0


def _train(args) -> int:
    """Train LaVIN; under `torchrun --nproc_per_node N` every process runs this and trains its shard."""
    import torch

    from . import distributed
    from .data.sources import load_samples
    from .lavin import LaVIN
    from .lavin.build import build_llm, build_vision
    from .train import train

    spec, config, lavin_config = _read_train_spec(args.config, resume=not args.no_resume)
    samples = load_samples(spec["data"])
    launched = distributed.init_distributed()            # no-op unless started by torchrun with WORLD_SIZE > 1
    llm, tokenizer = build_llm(spec["models"]["llm"])
    torch.manual_seed(config.seed)                          # the adapters' initialisation
    model = LaVIN(llm, build_vision(spec["models"]["vision"]), tokenizer, lavin_config)
    model.model_spec = spec["models"]
    if launched:
        model.to(distributed.rank_device())
    result = train(model, samples, config, resume=not args.no_resume)
    if distributed.is_main_process():
        model.save_pretrained(Path(config.out_dir) / "final")
        print(f"final loss {result.losses[-1]:.4f}; model saved to {Path(config.out_dir) / 'final'}")
    if launched:
        distributed.barrier()
        distributed.shutdown()
    return 0


def _read_train_spec(path: str, resume: bool):
    """The training config file, checked before any model loads: (spec, TrainConfig, LaVINConfig)."""
    from .lavin import LaVINConfig
    from .lavin.build import check_llm_spec, check_vision_spec
    from .train import TrainConfig, check_out_dir

    spec = _read_json(path)
    _check_keys(spec, TRAIN_SPEC_KEYS, ("lavin",), path)
    _check_keys(spec["models"], MODEL_KEYS, (), f'{path}: "models"')
    check_llm_spec(spec["models"]["llm"])
    check_vision_spec(spec["models"]["vision"])
    config = _config_section(spec, "train", TrainConfig, path)
    lavin_config = _config_section(spec, "lavin", LaVINConfig, path)
    check_out_dir(config, resume)
    return spec, config, lavin_config


def _check_keys(values, required: tuple[str, ...], optional: tuple[str, ...], what: str) -> None:
    expected = f"the keys {list(required)}" + (f" (and optionally {list(optional)})" if optional else "")
    if not isinstance(values, dict):
        raise ValueError(f"{what} must be a JSON object with {expected}, not a {type(values).__name__}; see the "
                         f"README's training section for the format")
    missing = [key for key in required if key not in values]
    unknown = sorted(set(values) - set(required) - set(optional))
    problems = [f"{label} {keys}" for label, keys in (("lacks", missing), ("has unknown key(s)", unknown)) if keys]
    if problems:
        raise ValueError(f"{what} {' and '.join(problems)}; it needs {expected}, see the README's training "
                         f"section for the format")


def _config_section(spec: dict, key: str, config_class, path: str):
    from .config import config_from_dict

    values = spec.get(key, {})
    if not isinstance(values, dict):
        raise ValueError(f'{path}: "{key}" must be a JSON object of {config_class.__name__} fields, not {values!r}')
    try:
        return config_from_dict(config_class, values)
    except TypeError as err:
        raise ValueError(f'{path}: "{key}" has a value of the wrong type ({err})') from err


def _generate(args) -> int:
    model = _load_trained(args.adapters)
    print(model.generate([args.prompt], [args.image], max_new_tokens=args.max_new_tokens)[0])
    return 0


def _eval(args) -> int:
    from .data.sources import load_samples
    from .evaluate import exact_match_accuracy

    samples = load_samples(_data_spec(args.data))
    accuracy, _ = exact_match_accuracy(_load_trained(args.adapters), samples, max_new_tokens=args.max_new_tokens)
    print(json.dumps({"samples": len(samples), "exact_match": accuracy}))
    return 0


def _load_trained(directory):
    from .lavin import LaVIN
    from .lavin.build import build_llm, build_vision
    from .lavin.checkpoint import saved_model_spec

    spec = saved_model_spec(directory)
    llm, tokenizer = build_llm(spec["llm"])
    return LaVIN.from_pretrained(directory, llm=llm, vision=build_vision(spec["vision"]), tokenizer=tokenizer)


def _data_spec(text: str):
    if text.endswith(".json"):
        return _read_json(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{DATA_OPTION}; {text!r} is neither ({err})") from None


def _read_json(path: str):
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder; give the path of a JSON file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} cannot be read as a JSON file ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


if __name__ == "__main__":
    sys.exit(main())
