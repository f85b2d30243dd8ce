"""Chat-template tokenisation with loss on answer tokens only, and batch padding."""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]           # IGNORE_INDEX on prompt tokens


def prompt_ids(tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """Token ids of a one-turn user prompt in the tokenizer's chat template, ready for the answer.

    system: a system message; None keeps the template's default (if it has one).
    """
    if getattr(tokenizer, "chat_template", None):
        return _template_ids(tokenizer, _with_system([{"role": "user", "content": prompt}], system))
    return tokenizer(f"Question: {prompt}\nAnswer:", add_special_tokens=True)["input_ids"]


def encode_example(tokenizer, prompt: str, answer: str, max_length: int | None = None) -> EncodedExample:
    """Prompt + answer + end-of-turn; labels cover the answer and the end-of-turn token."""
    return encode_turns(tokenizer, [(prompt, answer)], max_length)


def encode_turns(tokenizer, turns: list[tuple[str, str]], max_length: int | None = None,
                 system: str | None = None) -> EncodedExample:
    """A multi-turn conversation in the chat template; labels cover each answer and its end-of-turn token."""
    input_ids: list[int] = []
    labels: list[int] = []
    history: list[dict] = []
    for prompt, answer in turns:
        if not answer:
            raise ValueError(f"the turn with prompt {prompt[:60]!r} has an empty answer; every turn needs one")
        history.append({"role": "user", "content": prompt})
        context = _context_suffix(tokenizer, history, input_ids, system)
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        input_ids += context + answer_ids
        labels += [IGNORE_INDEX] * len(context) + answer_ids
        history.append({"role": "assistant", "content": answer})
    if max_length is not None and len(input_ids) > max_length:
        raise ValueError(f"a sample is {len(input_ids)} tokens long, over max_length={max_length}: "
                         f"shorten it or raise max_length")
    return EncodedExample(input_ids, labels)


def _context_suffix(tokenizer, history: list[dict], encoded_so_far: list[int], system: str | None) -> list[int]:
    """The template's tokens for the newest user turn (everything after what is already encoded)."""
    if len(history) == 1:
        return prompt_ids(tokenizer, history[0]["content"], system)
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer(f"\nQuestion: {history[-1]['content']}\nAnswer:", add_special_tokens=False)["input_ids"]
    rendered = _template_ids(tokenizer, _with_system(history, system))
    # The template closes the previous answer with its own end-of-turn text; skip what we already have.
    return rendered[len(encoded_so_far):] if rendered[:len(encoded_so_far)] == encoded_so_far else \
        rendered[_common_prefix(rendered, encoded_so_far):]


def _with_system(messages: list[dict], system: str | None) -> list[dict]:
    return messages if system is None else [{"role": "system", "content": system}] + messages


def _template_ids(tokenizer, messages: list[dict]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


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
