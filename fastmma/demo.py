"""The offline demo: LaVIN on the embedded SmolLM2-135M-Instruct and a small random CLIP ViT,
instruction-tuned on ShapesQA mixed with text-only instructions, on a CPU.

Before training it measures exact-match accuracy on held-out ShapesQA questions and the
perplexity of held-out text-only instructions (modality = text); after training, both again.
Writes metrics.json, loss.png and the trained tensors (LaVIN.save_pretrained) to the output folder.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import MMAConfig, trainable_summary
from .atomic import write_json_atomic
from .data.shapes import chance_accuracy, shapes_qa
from .data.text_tasks import text_instructions
from .evaluate import accuracy_by, answer_perplexity, exact_match_accuracy
from .lavin import LaVIN, LaVINConfig
from .lavin.build import DEFAULT_SPEC, build_llm, build_vision, describe_vision
from .plotting import save_loss_curve
from .train import TrainConfig, check_output_folder, train


@dataclass
class DemoSettings:
    steps: int = 800
    batch_size: int = 8
    lr: float = 2e-3
    precision: str = "bf16"        # autocast: ~1.7x the fp32 step rate on a CPU with AVX512-BF16
    train_images: int = 2400
    train_texts: int = 300
    heldout_images: int = 96
    heldout_texts: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"the demo needs at least one training step; got steps={self.steps}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"the demo trains on a CPU in fp32 or bf16; got precision={self.precision!r}")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AVX512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def build_demo_model(spec: dict = DEFAULT_SPEC) -> LaVIN:
    llm, tokenizer = build_llm(spec["llm"])
    vision = build_vision(spec["vision"])
    # SmolLM2's activations are no concern here: the layers keep what their ops save rather than recompute
    # q and k in backward (recompute_attention costs about a tenth of the demo's step time on a CPU).
    adapter = MMAConfig(dropout=0.0, recompute_attention=False)
    torch.manual_seed(0)
    model = LaVIN(llm, vision, tokenizer, LaVINConfig(llm_adapter=adapter, vision_adapter=adapter, visual_every=1,
                                                      system_prompt="", standardize_visual_features=True))
    model.model_spec = spec
    return model


def run_demo(out_dir: str | Path, settings: DemoSettings | None = None) -> dict:
    settings = settings or DemoSettings()
    out_dir = Path(out_dir)
    check_output_folder(out_dir, "the demo's output folder")
    print("building LaVIN: SmolLM2-135M-Instruct (embedded) + " + describe_vision(DEFAULT_SPEC["vision"]))
    model = build_demo_model()
    print(trainable_summary(model))
    if settings.precision == "bf16" and not cpu_has_native_bf16():
        print("note: this CPU has no native bf16 matrix products, so bf16 training will be slower than the "
              "README's figures; `--precision fp32` may be faster here")
    image_size = DEFAULT_SPEC["vision"]["random"]["image_size"]
    heldout_images = shapes_qa(settings.heldout_images, settings.seed + 1, image_size=image_size, split="heldout")
    heldout_texts = text_instructions(settings.heldout_texts, settings.seed + 1, split="heldout")
    train_samples = (shapes_qa(settings.train_images, settings.seed, image_size=image_size)
                     + text_instructions(settings.train_texts, settings.seed))

    model.fit_visual_statistics([sample.image for sample in train_samples if sample.image is not None])
    accuracy_before, _ = exact_match_accuracy(model, heldout_images, desc="accuracy before")
    text_ppl_base = answer_perplexity(model, heldout_texts)      # adapters are the identity at init
    started = time.perf_counter()
    result = train(model, train_samples, TrainConfig(out_dir=str(out_dir / "run"), steps=settings.steps,
                                                     batch_size=settings.batch_size, lr=settings.lr,
                                                     precision=settings.precision, seed=settings.seed,
                                                     checkpoint_every=100), resume=False)
    train_seconds = time.perf_counter() - started
    accuracy_after, answers = exact_match_accuracy(model, heldout_images, desc="accuracy after")
    metrics = {
        "accuracy_before": accuracy_before,
        "accuracy_after": accuracy_after,
        "accuracy_after_by_type": accuracy_by(heldout_images, answers),
        "chance_accuracy": chance_accuracy(heldout_images),
        "text_ppl_base": text_ppl_base,
        "text_ppl_adapted": answer_perplexity(model, heldout_texts),
        "train_seconds": round(train_seconds, 1),
        "steps": settings.steps,
        "batch_size": settings.batch_size,
        "precision": settings.precision,
        "heldout_questions": len(heldout_images),
        "vision": "random-init CLIP ViT (frozen): no pretrained vision weights are available offline",
    }
    model.save_pretrained(out_dir / "adapters")
    save_loss_curve(result.losses, out_dir / "loss.png", title="LaVIN on ShapesQA: training loss")
    write_json_atomic(out_dir / "metrics.json", metrics)
    _print_report(model, metrics, heldout_images, answers, out_dir)
    return metrics


def _print_report(model, metrics, heldout_images, answers, out_dir: Path) -> None:
    print("\nsample answers (held-out, KV-cached greedy decoding):")
    for sample, answer in list(zip(heldout_images, answers))[:4]:
        print(f"  [{sample.meta['question_type']}] {sample.turns[0][0]}\n     -> {answer!r} (reference "
              f"{sample.turns[0][1]!r})")
    text_prompts = ["What is 3 plus 4?", "What is the opposite of cold?"]
    for prompt, answer in zip(text_prompts, model.generate(text_prompts, max_new_tokens=12)):
        print(f"  [text] {prompt}\n     -> {answer!r}")
    by_type = ", ".join(f"{name} {value:.3f}" for name, value in metrics["accuracy_after_by_type"].items())
    print(f"\nShapesQA accuracy {metrics['accuracy_before']:.3f} -> {metrics['accuracy_after']:.3f} "
          f"({by_type}; chance {metrics['chance_accuracy']:.3f}); text perplexity {metrics['text_ppl_base']:.3f} -> "
          f"{metrics['text_ppl_adapted']:.3f}; {metrics['train_seconds']:.0f} s of training")
    print(f"wrote {out_dir / 'metrics.json'}, {out_dir / 'loss.png'} and the model to {out_dir / 'adapters'}")
