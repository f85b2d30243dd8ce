"""The train / held-out splits of the synthetic sources, and the rules that keep them disjoint.

Both rules are fixed functions of an item's content, never of the seed, so any train seed and any
held-out seed give disjoint sets: the held-out split measures generalisation, not recall.
"""
from __future__ import annotations

import hashlib
from typing import Sequence, TypeVar

SPLITS = ("train", "heldout")
HELDOUT_ONE_IN = 5          # a fifth of every content space is held out

Item = TypeVar("Item")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def split_of_key(content_key: str) -> str:
    """The split an item belongs to, from a string that identifies its content (a stable hash)."""
    digest = hashlib.sha256(content_key.encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % HELDOUT_ONE_IN == 0 else "train"


def items_in_split(pool: Sequence[Item], split: str) -> list[Item]:
    """The items of a fixed, ordered pool that belong to `split`: every fifth one is held out.

    For small pools (e.g. word pairs) where a hash could leave a split empty; both splits are
    non-empty for any pool of two or more items.
    """
    check_split(split)
    heldout = split == "heldout"
    return [item for index, item in enumerate(pool) if (index % HELDOUT_ONE_IN == 0) == heldout]
