"""LaVIN's sequence assembly.

    image sample:  [BOS] "Image: "    <visual tokens>  <conversation in the chat template>
    text sample:   [BOS] "Image: N/A"                  <conversation in the chat template>

The modality token MOD is not in the sequence: fastmma routes by modality id instead
(see fastmma/patching/routing.py), which is exactly equivalent. The loss covers the
answer turns only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.chat import IGNORE_INDEX, encode_turns, prompt_ids
from ..data.samples import VLSample


@dataclass
class EncodedSample:
    """Token ids of one sample, with a slot for its visual tokens after `prefix_ids`."""

    prefix_ids: list[int]
    text_ids: list[int]
    text_labels: list[int]
    image: object            # what VLSample.image held (None for text-only)

    @property
    def modality(self) -> int:
        return 0 if self.image is None else 1


def prefix_ids(tokenizer, has_image: bool, image_prefix: str, no_image_text: str) -> list[int]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    text = image_prefix if has_image else no_image_text
    return bos + tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_sample(tokenizer, sample: VLSample, image_prefix: str, no_image_text: str,
                  max_length: int | None = None, visual_tokens: int = 0, system: str | None = None) -> EncodedSample:
    encoded = encode_turns(tokenizer, sample.turns, system=system)
    prefix = prefix_ids(tokenizer, sample.has_image, image_prefix, no_image_text)
    total = len(prefix) + (visual_tokens if sample.has_image else 0) + len(encoded.input_ids)
    if max_length is not None and total > max_length:
        raise ValueError(f"a sample is {total} tokens long (meta={sample.meta}), over max_length={max_length}: "
                         f"shorten it or raise max_length")
    return EncodedSample(prefix, encoded.input_ids, encoded.labels, sample.image)


def encode_prompt(tokenizer, prompt: str, image, image_prefix: str, no_image_text: str,
                  system: str | None = None) -> EncodedSample:
    """A generation prompt: prefix, visual slot, the user turn and the assistant header."""
    text_ids = prompt_ids(tokenizer, prompt, system)
    prefix = prefix_ids(tokenizer, image is not None, image_prefix, no_image_text)
    return EncodedSample(prefix, text_ids, [IGNORE_INDEX] * len(text_ids), image)


def assemble(embed_tokens, encoded: list[EncodedSample], visual_tokens: torch.Tensor | None,
             pad_left: bool) -> dict[str, torch.Tensor]:
    """inputs_embeds [B, L, D], attention_mask [B, L], labels [B, L], modality [B].

    visual_tokens [N_images, T, D]: one row per sample that has an image, in order.
    """
    if not encoded:
        raise ValueError("the batch is empty; pass at least one encoded sample (or prompt)")
    rows, label_rows = [], []
    image_row = 0
    device = embed_tokens.weight.device
    for sample in encoded:
        pieces = [embed_tokens(torch.tensor(sample.prefix_ids, device=device))]
        labels = [IGNORE_INDEX] * len(sample.prefix_ids)
        if sample.image is not None:
            pieces.append(visual_tokens[image_row].to(pieces[0].dtype))
            labels += [IGNORE_INDEX] * visual_tokens.shape[1]
            image_row += 1
        pieces.append(embed_tokens(torch.tensor(sample.text_ids, device=device)))
        rows.append(torch.cat(pieces))                                                  # [L_i, D]
        label_rows.append(labels + sample.text_labels)
    return _pad(rows, label_rows, pad_left, torch.tensor([s.modality for s in encoded], device=device))


def _pad(rows: list[torch.Tensor], label_rows: list[list[int]], pad_left: bool, modality: torch.Tensor) -> dict:
    length = max(row.shape[0] for row in rows)
    batch, hidden = len(rows), rows[0].shape[1]
    device, dtype = rows[0].device, rows[0].dtype
    inputs_embeds = torch.zeros(batch, length, hidden, device=device, dtype=dtype)
    attention_mask = torch.zeros(batch, length, dtype=torch.long, device=device)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long, device=device)
    for i, (row, row_labels) in enumerate(zip(rows, label_rows)):
        span = slice(length - row.shape[0], length) if pad_left else slice(0, row.shape[0])
        inputs_embeds[i, span] = row
        attention_mask[i, span] = 1
        labels[i, span] = torch.tensor(row_labels, device=device)
    return {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask, "labels": labels,
            "modality": modality}
