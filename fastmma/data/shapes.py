"""ShapesQA: a deterministic synthetic visual question-answering task that a tiny model can learn.

Images: RGB squares of `image_size` pixels (default 64: a 4x4 patch grid for a ViT with patch 16,
8x8 with patch 8), a white background and filled shapes in red, green, blue or yellow, drawn 4x
supersampled and box-downsampled so edges are anti-aliased. One question per image:

    colour    one shape                                    -> "red" | "green" | "blue" | "yellow"
              What colour is the shape? Answer with one word: red, green, blue or yellow.
    shape     one shape                                    -> "circle" | "square" | "triangle"
              What shape is in the image? Answer with one word: circle, square or triangle.
    position  one shape, centred on the middle of the      -> "left" | "right" | "top" | "bottom"
              left/right/top/bottom half
              Where is the shape? Answer with one word: left, right, top or bottom.
    count     1-3 shapes in distinct cells of a 2x2 grid,  -> "one" | "two" | "three"
              each with its own colour and kind
              How many shapes are there? Answer with one word: one, two or three.

Choices of design:
- Every answer is one lower-case word from the fixed set `answer_choices(type)`; counts are words
  ("two", not "2") so that holds for every type. Exact match against meta["answer"] scores it.
- The prompt lists the choices: an instruction-tuned LLM then answers with a valid word from the
  first step, so accuracy starts at chance and any gain above `chance_accuracy` is visual grounding.
- Each shape's colour, kind, place, size and small position jitter are drawn uniformly, so each
  answer is (close to) uniform over its choices and the text alone predicts nothing.
- Question types cycle through `question_types` in order, so they are exactly balanced.
- Splits: an image belongs to "train" or "heldout" by a hash of its content (fastmma.data.splits),
  so no held-out image is a pixel copy of a train image, whatever the seeds.

Sample: VLSample(image=PIL RGB image, turns=[(prompt, answer)],
                 meta={"source": "shapes_qa", "question_type", "answer", "split"}).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

from PIL import Image, ImageDraw

from .samples import VLSample
from .splits import check_split, split_of_key

COLOURS = {"red": (220, 40, 40), "green": (30, 160, 60), "blue": (40, 90, 220), "yellow": (235, 200, 20)}
KINDS = ("circle", "square", "triangle")
SIDES = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75)}
GRID_CELLS = {"top-left": (0.25, 0.25), "top-right": (0.75, 0.25),
              "bottom-left": (0.25, 0.75), "bottom-right": (0.75, 0.75)}
COUNT_WORDS = ("one", "two", "three")
QUESTIONS = {"colour": "What colour is the shape?", "shape": "What shape is in the image?",
             "position": "Where is the shape?", "count": "How many shapes are there?"}
QUESTION_TYPES = tuple(QUESTIONS)
CHOICES = {"colour": tuple(COLOURS), "shape": KINDS, "position": tuple(SIDES), "count": COUNT_WORDS}

BACKGROUND = (255, 255, 255)
MIN_IMAGE_SIZE = 32
SUPERSAMPLE = 4
SINGLE_RADIUS = (0.12, 0.17)    # fractions of the image side; with JITTER every shape stays in its half
COUNT_RADIUS = (0.10, 0.15)     # ... and in its grid cell
JITTER = 0.03
TRIANGLE_SCALE = 1.25           # circumradius / radius, so the three kinds have similar areas
SQUARE_SCALE = 0.9              # half side / radius


@dataclass(frozen=True)
class PlacedShape:
    """One shape in pixels of the final image: centre (x, y), radius, and the named place it sits in."""

    kind: str
    colour: str
    place: str
    x: int
    y: int
    radius: int


def answer_choices(question_type: str) -> tuple[str, ...]:
    """Every answer a question of this type can have."""
    if question_type not in CHOICES:
        raise ValueError(f"unknown ShapesQA question type {question_type!r}; use one of {', '.join(QUESTION_TYPES)}")
    return CHOICES[question_type]


def chance_accuracy(samples: Sequence[VLSample]) -> float:
    """Expected exact-match accuracy of guessing uniformly among each sample's answer choices."""
    if not samples:
        raise ValueError("chance_accuracy needs at least one sample")
    return sum(1.0 / len(answer_choices(sample.meta["question_type"])) for sample in samples) / len(samples)


def shapes_qa(num_samples: int, seed: int, image_size: int = 64,
              question_types: Sequence[str] = QUESTION_TYPES, split: str = "train") -> list[VLSample]:
    """`num_samples` ShapesQA samples; the same arguments give byte-identical images."""
    _check_arguments(num_samples, image_size, question_types, split)
    rng = random.Random(f"shapes-qa/{split}/{seed}")
    return [_sample(rng, question_types[index % len(question_types)], image_size, split)
            for index in range(num_samples)]


def render_shapes(shapes: Sequence[PlacedShape], image_size: int) -> Image.Image:
    """The RGB image of `shapes` on the background, anti-aliased."""
    canvas = Image.new("RGB", (image_size * SUPERSAMPLE, image_size * SUPERSAMPLE), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        _draw_shape(draw, shape)
    return canvas.reduce(SUPERSAMPLE)


def _check_arguments(num_samples: int, image_size: int, question_types: Sequence[str], split: str) -> None:
    check_split(split)
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size {image_size} is too small to draw distinguishable shapes; use >= "
                         f"{MIN_IMAGE_SIZE} (the model resizes images to its own input size anyway)")
    if not question_types:
        raise ValueError(f"question_types is empty; pick from {', '.join(QUESTION_TYPES)}")
    for question_type in question_types:
        answer_choices(question_type)


def _sample(rng: random.Random, question_type: str, image_size: int, split: str) -> VLSample:
    shapes = _layout_in_split(rng, question_type, image_size, split)
    answer = _answer(question_type, shapes)
    prompt = f"{QUESTIONS[question_type]} Answer with one word: {_spoken_list(CHOICES[question_type])}."
    meta = {"source": "shapes_qa", "question_type": question_type, "answer": answer, "split": split}
    return VLSample(render_shapes(shapes, image_size), [(prompt, answer)], meta)


def _layout_in_split(rng: random.Random, question_type: str, image_size: int, split: str) -> tuple[PlacedShape, ...]:
    """Draw layouts until one whose content belongs to `split` (one in five tries for "heldout")."""
    while True:
        shapes = _layout(rng, question_type, image_size)
        if split_of_key(_content_key(shapes, image_size)) == split:
            return shapes


def _layout(rng: random.Random, question_type: str, image_size: int) -> tuple[PlacedShape, ...]:
    if question_type == "count":
        cells = sorted(rng.sample(sorted(GRID_CELLS), rng.randint(1, len(COUNT_WORDS))))   # canonical order
        return tuple(_placed_shape(rng, cell, GRID_CELLS[cell], COUNT_RADIUS, image_size) for cell in cells)
    side = rng.choice(tuple(SIDES))
    return (_placed_shape(rng, side, SIDES[side], SINGLE_RADIUS, image_size),)


def _placed_shape(rng: random.Random, place: str, centre: tuple[float, float], radius_range: tuple[float, float],
                  image_size: int) -> PlacedShape:
    jitter = round(JITTER * image_size)
    return PlacedShape(kind=rng.choice(KINDS), colour=rng.choice(tuple(COLOURS)), place=place,
                       x=round(centre[0] * image_size) + rng.randint(-jitter, jitter),
                       y=round(centre[1] * image_size) + rng.randint(-jitter, jitter),
                       radius=rng.randint(round(radius_range[0] * image_size), round(radius_range[1] * image_size)))


def _answer(question_type: str, shapes: tuple[PlacedShape, ...]) -> str:
    if question_type == "count":
        return COUNT_WORDS[len(shapes) - 1]
    attribute = {"colour": "colour", "shape": "kind", "position": "place"}[question_type]
    return getattr(shapes[0], attribute)


def _content_key(shapes: tuple[PlacedShape, ...], image_size: int) -> str:
    """Identifies the rendered pixels: equal keys draw equal images, different keys different ones."""
    return f"{image_size}|" + ";".join(f"{s.kind},{s.colour},{s.x},{s.y},{s.radius}" for s in shapes)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: PlacedShape) -> None:
    x, y = (shape.x + 0.5) * SUPERSAMPLE, (shape.y + 0.5) * SUPERSAMPLE          # centre of the pixel
    r = shape.radius * SUPERSAMPLE
    fill = COLOURS[shape.colour]
    if shape.kind == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape.kind == "square":
        half = r * SQUARE_SCALE
        draw.rectangle((x - half, y - half, x + half, y + half), fill=fill)
    else:
        apex = r * TRIANGLE_SCALE
        half_base = apex * math.sqrt(3) / 2
        draw.polygon([(x, y - apex), (x + half_base, y + apex / 2), (x - half_base, y + apex / 2)], fill=fill)


def _spoken_list(words: Sequence[str]) -> str:
    return f"{', '.join(words[:-1])} or {words[-1]}"
