"""Retrieval on the synthetic shapes set: a tiny BEiT-3, MWA-tuned as a dual encoder on the CPU.

The backbone is a freshly initialised tiny BEiT-3, frozen; the MultiWay-Adapter, the two
retrieval heads and the logit scale train with a contrastive loss. Evaluation uses
renders the training never saw (another seed), one per scene, every scene's caption
as the text gallery.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..summary import trainable_parameters
from .beit3 import BEiT3Dims, build_beit3
from .config import MWAConfig
from .patching import patch
from .retrieval import DualEncoder, evaluate
from .synthetic import all_scenes, render_set
from .tokenizer import WordTokenizer


@dataclass
class RetrievalSetup:
    """Everything that defines one run; the defaults finish in about a minute on two CPU cores."""

    steps: int = 300
    batch_size: int = 48
    learning_rate: float = 3e-3
    seed: int = 0
    image_size: int = 32
    patch_size: int = 8
    embed_dim: int = 64
    layers: int = 2
    heads: int = 4
    ffn_dim: int = 128
    renders_per_scene: int = 8
    mwa: MWAConfig = field(default_factory=lambda: MWAConfig(rank=16, scale=1.0, dropout=0.0))


@dataclass
class RetrievalData:
    train_images: torch.Tensor        # [R * S, 3, H, W]; render j of scene i at j * S + i
    eval_images: torch.Tensor         # [S, 3, H, W]
    token_ids: torch.Tensor           # [S, T], caption of scene i at row i
    padding_mask: torch.Tensor        # [S, T], True at padding


def build_data(setup: RetrievalSetup) -> tuple[RetrievalData, WordTokenizer]:
    scenes = all_scenes()
    captions = [scene.caption for scene in scenes]
    tokenizer = WordTokenizer.from_texts(captions)
    token_ids, padding_mask = tokenizer.batch(captions)
    data = RetrievalData(
        train_images=render_set(scenes, setup.renders_per_scene, setup.image_size, seed=setup.seed),
        eval_images=render_set(scenes, 1, setup.image_size, seed=setup.seed + 1_000_003),
        token_ids=token_ids, padding_mask=padding_mask)
    return data, tokenizer


def build_model(setup: RetrievalSetup, vocab_size: int, max_text_length: int) -> DualEncoder:
    torch.manual_seed(setup.seed)
    dims = BEiT3Dims(embed_dim=setup.embed_dim, layers=setup.layers, heads=setup.heads, ffn_dim=setup.ffn_dim,
                     img_size=setup.image_size, patch_size=setup.patch_size, vocab_size=vocab_size,
                     max_source_positions=max_text_length + 2)
    model = DualEncoder(build_beit3(dims))
    patch(model.beit3, setup.mwa)
    return model


def train(model: DualEncoder, data: RetrievalData, setup: RetrievalSetup) -> list[float]:
    """AdamW on the trainable parameters; each batch holds distinct scenes, each in a random render."""
    generator = torch.Generator().manual_seed(setup.seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=setup.learning_rate,
                                  weight_decay=0.01)
    scene_count = data.token_ids.shape[0]
    renders = data.train_images.shape[0] // scene_count
    losses = []
    model.train()
    for _ in range(setup.steps):
        scene_ids = torch.randperm(scene_count, generator=generator)[:setup.batch_size]            # [B]
        render_ids = torch.randint(renders, (scene_ids.shape[0],), generator=generator)          # [B]
        images = data.train_images[render_ids * scene_count + scene_ids]
        loss = model(images, data.token_ids[scene_ids], data.padding_mask[scene_ids])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def run(setup: RetrievalSetup) -> dict:
    """Recall before and after MWA training, the loss curve, the trainable share and the wall time."""
    started = time.perf_counter()
    data, tokenizer = build_data(setup)
    model = build_model(setup, len(tokenizer), data.token_ids.shape[1])
    before = evaluate(model, data.eval_images, data.token_ids, data.padding_mask)
    losses = train(model, data, setup)
    after = evaluate(model, data.eval_images, data.token_ids, data.padding_mask)
    trainable, total = trainable_parameters(model)
    return {"before": before, "after": after, "losses": losses, "trainable": trainable, "total": total,
            "scenes": data.token_ids.shape[0], "seconds": time.perf_counter() - started}
