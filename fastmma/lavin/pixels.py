"""Images -> CLIP pixel tensors (resize, RGB, CLIP mean/std), without torchvision."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..data.images import load_image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def pixel_values(images: list, image_size: int) -> torch.Tensor:
    """[N, 3, image_size, image_size] float32 from PIL images or paths."""
    arrays = [_to_array(load_image(image), image_size) for image in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)                      # [N, 3, H, W]
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (batch - mean) / std


def _to_array(image: Image.Image, image_size: int) -> np.ndarray:
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 255.0                                   # [H, W, 3]
