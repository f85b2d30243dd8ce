"""Chat-template tokenisation with loss on answer tokens only, and batch padding."""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]           # IGNORE_INDEX on prompt tokens


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of a one-turn user prompt in the tokenizer's chat template, ready for the answer."""
    messages = [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    return tokenizer(f"Question: {prompt}\nAnswer:", add_special_tokens=True)["input_ids"]


def encode_example(tokenizer, prompt: str, answer: str, max_length: int | None = None) -> EncodedExample:
    """Prompt + answer + end-of-turn; labels cover the answer and the end-of-turn token."""
    if not answer:
        raise ValueError(f"the example with prompt {prompt[:60]!r} has an empty answer; every example needs one")
    context = prompt_ids(tokenizer, prompt)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = context + answer_ids
    if max_length is not None and len(input_ids) > max_length:
        raise ValueError(f"an example is {len(input_ids)} tokens long, over max_length={max_length}: "
                         f"shorten it or raise max_length")
    return EncodedExample(input_ids, [IGNORE_INDEX] * len(context) + answer_ids)


def collate_right_padded(examples: list[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Training batch: input_ids, attention_mask, labels, all [B, L_max], padded on the right."""
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def left_padded_prompts(tokenizer, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Generation batch of chat prompts: input_ids and attention_mask [B, L_max], padded on the left."""
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    length = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, length - len(ids):] = torch.tensor(ids)
        attention_mask[row, length - len(ids):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
