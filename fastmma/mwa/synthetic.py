"""A deterministic synthetic image-caption set: coloured shapes at named positions.

Every scene is a (colour, shape, position) triple rendered as a small PIL image with a
caption such as "a red circle at the top left". Each render jitters the shape's size and
offset with a seeded generator, so the same seed always gives the same pixels, and
different seeds give different pictures of the same scenes.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
import torch
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 230), "yellow": (235, 215, 40),
           "purple": (150, 60, 200), "white": (240, 240, 240)}
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = {"top left": (0.27, 0.27), "top right": (0.73, 0.27), "bottom left": (0.27, 0.73),
             "bottom right": (0.73, 0.73), "center": (0.5, 0.5)}               # (x, y) as fractions of the side
BACKGROUND = (25, 25, 30)


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    position: str

    @property
    def caption(self) -> str:
        where = "in the center" if self.position == "center" else f"at the {self.position}"
        return f"a {self.colour} {self.shape} {where}"


def all_scenes() -> list[Scene]:
    """Every (colour, shape, position) combination, in a fixed order."""
    return [Scene(*combo) for combo in product(COLOURS, SHAPES, POSITIONS)]


def render(scene: Scene, image_size: int, rng: np.random.Generator) -> Image.Image:
    """One jittered picture of `scene`, image_size x image_size RGB."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    fraction_x, fraction_y = POSITIONS[scene.position]
    jitter = image_size * 0.05
    centre_x = fraction_x * image_size + rng.uniform(-jitter, jitter)
    centre_y = fraction_y * image_size + rng.uniform(-jitter, jitter)
    radius = image_size * rng.uniform(0.15, 0.2)
    _draw_shape(ImageDraw.Draw(image), scene.shape, centre_x, centre_y, radius, COLOURS[scene.colour])
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, radius: float, colour) -> None:
    box = (x - radius, y - radius, x + radius, y + radius)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)], fill=colour)
    elif shape == "cross":
        arm = radius / 3
        draw.rectangle((x - radius, y - arm, x + radius, y + arm), fill=colour)
        draw.rectangle((x - arm, y - radius, x + arm, y + radius), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}; known shapes are {SHAPES}")


def image_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL RGB image -> [3, H, W] float, scaled to [-1, 1]."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)   # [H, W, 3]
    return pixels.permute(2, 0, 1).contiguous()


def render_set(scenes: list[Scene], renders_per_scene: int, image_size: int, seed: int) -> torch.Tensor:
    """Images [len(scenes) * renders_per_scene, 3, S, S]; render j of scene i sits at j * len(scenes) + i."""
    rng = np.random.default_rng(seed)
    images = [image_tensor(render(scene, image_size, rng)) for _ in range(renders_per_scene) for scene in scenes]
    return torch.stack(images)
