"""Text-only instructions with deterministic, checkable one-line answers (modality 0 samples).

Mixed into vision-language training so the text route of the adapters keeps working, and scored
on the "heldout" split for text perplexity and exact match. Tasks a 135M instruction model handles:

    task          prompt (user turn)                                                       answer
    addition      What is 7 plus 5? Answer with a number.                                  "12"
    subtraction   What is 12 minus 5? Answer with a number.                                "7"
    opposite      What is the opposite of hot? Answer with one word.                       "cold"
    next_day      Which day comes after Monday? Answer with one word.                      "Tuesday"
    first_letter  What is the first letter of the word "garden"? Answer with one letter.   "g"
    spelling      Spell the word "dog" with a space between the letters.                   "d o g"

Each task draws from a fixed, ordered pool of items (operand pairs, word pairs, days, words);
every fifth item of a pool is held out (fastmma.data.splits.items_in_split), so "train" and
"heldout" never share a prompt, and a held-out word pair is held out in both directions.
Tasks cycle in the order above, so they are balanced.

Sample: VLSample(image=None, turns=[(prompt, answer)],
                 meta={"source": "text_instructions", "task", "answer", "split"}).
"""
from __future__ import annotations

import random
from typing import Callable

from .samples import VLSample
from .splits import check_split, items_in_split

MAX_OPERAND = 20
OPPOSITES = (("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("day", "night"),
             ("open", "closed"), ("happy", "sad"), ("old", "new"), ("wet", "dry"), ("light", "dark"),
             ("full", "empty"), ("early", "late"), ("hard", "soft"), ("long", "short"), ("high", "low"),
             ("in", "out"), ("left", "right"), ("loud", "quiet"), ("rich", "poor"), ("win", "lose"))
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WORDS = ("apple", "garden", "river", "window", "pencil", "tiger", "house", "music", "orange", "planet",
         "yellow", "forest", "bread", "cloud", "lemon", "mountain", "ocean", "rabbit", "summer", "table",
         "dog", "cat", "sun", "book", "fish", "tree", "milk", "star", "door", "cake")

Prompt = tuple[str, str]                        # (user turn, answer)


def _additions(split: str) -> list[Prompt]:
    pairs = items_in_split([(a, b) for a in range(1, MAX_OPERAND + 1) for b in range(1, MAX_OPERAND + 1)], split)
    return [(f"What is {a} plus {b}? Answer with a number.", str(a + b)) for a, b in pairs]


def _subtractions(split: str) -> list[Prompt]:
    pairs = items_in_split([(a, b) for a in range(1, MAX_OPERAND + 1) for b in range(1, a + 1)], split)
    return [(f"What is {a} minus {b}? Answer with a number.", str(a - b)) for a, b in pairs]


def _opposites(split: str) -> list[Prompt]:
    pairs = items_in_split(OPPOSITES, split)
    both_ways = [pair for first, second in pairs for pair in ((first, second), (second, first))]
    return [(f"What is the opposite of {word}? Answer with one word.", opposite) for word, opposite in both_ways]


def _next_days(split: str) -> list[Prompt]:
    return [(f"Which day comes after {day}? Answer with one word.", DAYS[(index + 1) % len(DAYS)])
            for index, day in items_in_split(list(enumerate(DAYS)), split)]


def _first_letters(split: str) -> list[Prompt]:
    return [(f'What is the first letter of the word "{word}"? Answer with one letter.', word[0])
            for word in items_in_split(WORDS, split)]


def _spellings(split: str) -> list[Prompt]:
    return [(f'Spell the word "{word}" with a space between the letters.', " ".join(word))
            for word in items_in_split(WORDS, split)]


TASKS: dict[str, Callable[[str], list[Prompt]]] = {
    "addition": _additions, "subtraction": _subtractions, "opposite": _opposites,
    "next_day": _next_days, "first_letter": _first_letters, "spelling": _spellings,
}


def text_instructions(num: int, seed: int, split: str = "train") -> list[VLSample]:
    """`num` text-only samples, deterministic for (seed, split); train and heldout share no prompt."""
    check_split(split)
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    rng = random.Random(f"text-instructions/{split}/{seed}")
    pools = {task: build(split) for task, build in TASKS.items()}
    tasks = tuple(TASKS)
    return [_sample(rng, tasks[index % len(tasks)], pools, split) for index in range(num)]


def _sample(rng: random.Random, task: str, pools: dict[str, list[Prompt]], split: str) -> VLSample:
    prompt, answer = rng.choice(pools[task])
    return VLSample(None, [(prompt, answer)],
                    {"source": "text_instructions", "task": task, "answer": answer, "split": split})
