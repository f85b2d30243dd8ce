"""The offline demo: patch SmolLM2-135M-Instruct, teach it facts it cannot know, generate with a KV cache.

The facts are about fictional countries (names built from syllables, deterministic), so the
base model scores ~0 on them before training: any gain comes from the adapters.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from . import MMAConfig, patch, save_adapters, trainable_summary
from .atomic import write_json_atomic
from .data.chat import collate_right_padded, encode_example, left_padded_prompts
from .optim import build_optimizer, build_scheduler
from .plotting import save_loss_curve
from .trainer import cycle_batches, train_steps

SYLLABLES = ["ka", "lor", "vem", "tis", "dra", "qel", "mun", "zor", "bai", "fen", "rho", "sul", "pex", "oru", "wyn"]


def fictional_facts(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """`count` (question, answer) pairs 'What is the capital of X?' -> 'Y.', with made-up names."""
    rng = random.Random(seed)
    names = set()
    while len(names) < 2 * count:
        names.add("".join(rng.sample(SYLLABLES, 3)).capitalize())
    names = sorted(names)
    rng.shuffle(names)
    return [(f"What is the capital of {names[2 * i]}?", f"{names[2 * i + 1]}.") for i in range(count)]


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 12, modality=0) -> list[str]:
    batch = left_padded_prompts(tokenizer, prompts)
    out = model.generate(**batch, modality=modality, max_new_tokens=max_new_tokens, do_sample=False,
                         use_cache=True, pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(row[batch["input_ids"].shape[1]:], skip_special_tokens=True).strip() for row in out]


def exact_match(answers: list[str], expected: list[str]) -> float:
    return sum(a == e for a, e in zip(answers, expected)) / len(expected)


def run_demo(out_dir: str | Path, steps: int = 40, batch_size: int = 8, num_facts: int = 16, lr: float = 5e-3,
             seed: int = 0) -> dict:
    """Patch -> train -> generate on the default model. Writes adapters, metrics.json and loss.png to out_dir."""
    from .models import load_default_llm

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    print("loading SmolLM2-135M-Instruct (embedded default model) ...")
    model, tokenizer = load_default_llm()
    patch(model, MMAConfig(dropout=0.0))
    print(trainable_summary(model))

    facts = fictional_facts(num_facts, seed)
    questions, answers = [q for q, _ in facts], [a for _, a in facts]
    accuracy_before = exact_match(greedy_answers(model, tokenizer, questions), answers)

    examples = [encode_example(tokenizer, q, a) for q, a in facts]
    batches = [collate_right_padded(examples[i:i + batch_size], tokenizer.pad_token_id)
               for i in range(0, len(examples), batch_size)]
    optimizer = build_optimizer(model, lr=lr)
    scheduler = build_scheduler(optimizer, total_steps=steps, warmup_steps=max(1, steps // 10))
    started = time.perf_counter()
    losses = train_steps(model, cycle_batches(batches), optimizer, scheduler, steps, desc="fine-tuning adapters")
    train_seconds = time.perf_counter() - started

    generated = greedy_answers(model, tokenizer, questions)
    metrics = {
        "model": "SmolLM2-135M-Instruct",
        "task": f"{num_facts} fictional capitals (exact match, greedy, KV cache)",
        "accuracy_before": accuracy_before,
        "accuracy_after": exact_match(generated, answers),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
    }
    save_adapters(model, out_dir / "adapters")
    save_loss_curve(losses, out_dir / "loss.png", title="fastmma demo: adapter fine-tuning loss")
    write_json_atomic(out_dir / "metrics.json", metrics)
    for question, answer in list(zip(questions, generated))[:4]:
        print(f"  Q: {question}\n  A: {answer}")
    print(f"accuracy before {accuracy_before:.2f} -> after {metrics['accuracy_after']:.2f}; "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; {train_seconds:.0f}s of training")
    print(f"wrote {out_dir / 'metrics.json'}, {out_dir / 'loss.png'} and adapters to {out_dir / 'adapters'}")
    return metrics
