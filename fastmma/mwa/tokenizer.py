"""A word-level tokenizer built from a fixed list of captions (enough for the synthetic set)."""
from __future__ import annotations

import torch

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


class WordTokenizer:
    """Lower-cased whitespace words -> ids; every sequence is [BOS] words [EOS], padded on the right."""

    def __init__(self, vocabulary: list[str]):
        self.vocabulary = list(vocabulary)
        self.ids = {word: index for index, word in enumerate(self.vocabulary)}
        missing = [token for token in SPECIAL_TOKENS if token not in self.ids]
        if missing:
            raise ValueError(f"the vocabulary lacks the special tokens {missing}")

    @classmethod
    def from_texts(cls, texts: list[str]) -> "WordTokenizer":
        words = sorted({word for text in texts for word in text.lower().split()})
        return cls([*SPECIAL_TOKENS, *words])

    def __len__(self) -> int:
        return len(self.vocabulary)

    def encode(self, text: str) -> list[int]:
        unknown = self.ids[UNK]
        return [self.ids[BOS], *(self.ids.get(word, unknown) for word in text.lower().split()), self.ids[EOS]]

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(token_ids [B, T], padding_mask [B, T] with True at padding) for BEiT-3's text input."""
        encoded = [self.encode(text) for text in texts]
        length = max(len(ids) for ids in encoded)
        token_ids = torch.full((len(texts), length), self.ids[PAD], dtype=torch.long)
        for row, ids in enumerate(encoded):
            token_ids[row, :len(ids)] = torch.tensor(ids)
        return token_ids, token_ids == self.ids[PAD]
