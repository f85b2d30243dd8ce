"""Evaluation of a LaVIN model: exact-match accuracy of generated answers, and answer perplexity."""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .data.samples import VLSample


def normalize_answer(text: str) -> str:
    """Lower-case, first line, surrounding spaces and a final full stop removed."""
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return first_line.strip().rstrip(".").strip().lower()


def answer_matches(sample: VLSample, answer: str) -> bool:
    """Exact match of a generated answer with the reference answer of the sample's first turn."""
    return normalize_answer(answer) == normalize_answer(sample.turns[0][1])


@torch.no_grad()
def exact_match_accuracy(model, samples: list[VLSample], batch_size: int = 32, max_new_tokens: int = 8,
                         desc: str = "evaluating") -> tuple[float, list[str]]:
    """Share of samples whose greedy (KV-cached) answer to the first turn equals the reference answer."""
    if not samples:
        raise ValueError("exact_match_accuracy needs at least one sample")
    answers = []
    for start in tqdm(range(0, len(samples), batch_size), desc=desc, leave=False):
        batch = samples[start:start + batch_size]
        answers += model.generate([s.turns[0][0] for s in batch], [s.image for s in batch],
                                  max_new_tokens=max_new_tokens)
    correct = sum(answer_matches(sample, answer) for sample, answer in zip(samples, answers))
    return correct / len(samples), answers


def accuracy_by(samples: list[VLSample], answers: list[str], key: str = "question_type") -> dict[str, float]:
    """Exact-match accuracy per value of `sample.meta[key]` (e.g. per ShapesQA question type), in first-seen order."""
    if len(samples) != len(answers):
        raise ValueError(f"{len(samples)} samples but {len(answers)} answers; pass the answers of these samples")
    hits: dict[str, list[bool]] = {}
    for sample, answer in zip(samples, answers):
        if key not in sample.meta:
            raise ValueError(f"sample meta {sorted(sample.meta)} has no {key!r}; group by a key every sample has")
        hits.setdefault(str(sample.meta[key]), []).append(answer_matches(sample, answer))
    return {group: sum(flags) / len(flags) for group, flags in hits.items()}


@torch.no_grad()
def answer_perplexity(model, samples: list[VLSample], batch_size: int = 16) -> float:
    """exp(mean negative log-likelihood per answer token), teacher-forced."""
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        for start in range(0, len(samples), batch_size):
            encoded = [model.encode(s) for s in samples[start:start + batch_size]]
            tokens = sum(sum(label != -100 for label in e.text_labels) for e in encoded)
            total_nll += model(encoded).loss.item() * tokens
            total_tokens += tokens
    finally:
        model.train(was_training)
    return math.exp(total_nll / total_tokens)
