"""The one sample type every vision-language data source produces."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from PIL import Image

ImageLike = Union[Image.Image, str, Path, None]


@dataclass
class VLSample:
    """One instruction-following example.

    image: a PIL image, a path to one, or None for a text-only sample (modality 0).
    turns: [(user_text, assistant_text), ...]; the loss covers the assistant turns only.
    meta: free-form fields a data source wants to keep (e.g. question type, ScienceQA pid).
    """

    image: ImageLike
    turns: list[tuple[str, str]]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.turns:
            raise ValueError(f"a sample has no conversation turns (meta={self.meta}); each needs a user turn "
                             f"and an answer")
        for user, assistant in self.turns:
            if not isinstance(user, str) or not isinstance(assistant, str) or not assistant.strip():
                raise ValueError(f"a sample has a turn without an answer (meta={self.meta}): "
                                 f"user={str(user)[:60]!r}, answer={str(assistant)[:60]!r}")

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def modality(self) -> int:
        return 1 if self.has_image else 0
