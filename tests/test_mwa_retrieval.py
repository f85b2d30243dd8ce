"""Synthetic shapes, tokenizer, contrastive loss, Recall@K, and MWA training that lifts recall."""
import argparse
import math
import sys

import numpy as np
import pytest
import torch

from fastmma.mwa._timm_shim import drop_path, installed_if_timm_missing, timm_is_importable
from fastmma.mwa.retrieval import contrastive_loss, recall_at_k
from fastmma.mwa.synthetic import COLOURS, POSITIONS, SHAPES, Scene, all_scenes, render, render_set
from fastmma.mwa.tokenizer import WordTokenizer


def test_scenes_cover_every_combination_with_unique_captions():
    scenes = all_scenes()
    assert len(scenes) == len(COLOURS) * len(SHAPES) * len(POSITIONS)
    assert len({scene.caption for scene in scenes}) == len(scenes)
    assert Scene("red", "circle", "top left").caption == "a red circle at the top left"
    assert Scene("blue", "cross", "center").caption == "a blue cross in the center"


def test_renders_are_deterministic_and_seed_dependent():
    scenes = all_scenes()[:6]
    first = render_set(scenes, 2, 32, seed=5)
    assert first.shape == (12, 3, 32, 32) and first.min() >= -1 and first.max() <= 1
    assert torch.equal(first, render_set(scenes, 2, 32, seed=5))
    assert not torch.equal(first, render_set(scenes, 2, 32, seed=6))


def test_shape_is_drawn_where_the_caption_says():
    image = np.asarray(render(Scene("red", "square", "bottom right"), 32, np.random.default_rng(0)))
    red = (image[..., 0] > 200) & (image[..., 1] < 80)                             # [32, 32]
    rows, cols = red.nonzero()
    assert rows.mean() > 16 and cols.mean() > 16


def test_tokenizer_pads_on_the_right_and_marks_padding():
    tokenizer = WordTokenizer.from_texts(["a red circle in the center", "a red circle at the top left"])
    token_ids, padding = tokenizer.batch(["a red circle in the center", "A blue circle"])
    assert token_ids.shape == (2, 8)
    assert padding.tolist()[1] == [False] * 5 + [True] * 3
    assert tokenizer.vocabulary[token_ids[1, 2]] == "[UNK]"                        # "blue" was never seen
    assert tokenizer.vocabulary[token_ids[0, 0]] == "[BOS]" and tokenizer.vocabulary[token_ids[0, 7]] == "[EOS]"


def test_recall_at_k_counts_ranks():
    similarity = torch.tensor([[0.9, 0.1, 0.0],       # image 0: its text ranked first
                               [0.8, 0.5, 0.0],       # image 1: second
                               [0.7, 0.6, 0.1]])      # image 2: third
    recalls = recall_at_k(similarity, ks=(1, 2, 3))
    assert recalls["i2t@1"] == pytest.approx(100 / 3) and recalls["i2t@2"] == pytest.approx(200 / 3)
    assert recalls["i2t@3"] == 100
    assert recalls["t2i@1"] == pytest.approx(200 / 3)                              # text 1 ranks image 1 second


def test_contrastive_loss_is_symmetric_cross_entropy():
    embeddings = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    perfect = contrastive_loss(embeddings * 1, embeddings, torch.tensor(math.log(100.0)))
    shuffled = contrastive_loss(embeddings, embeddings.roll(1, dims=0), torch.tensor(math.log(100.0)))
    assert perfect < 0.1 < shuffled
    logit_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    contrastive_loss(embeddings, embeddings.roll(1, dims=0), logit_scale).backward()
    assert logit_scale.grad is not None and logit_scale.grad != 0


def test_timm_stand_in_drops_whole_samples_and_leaves_no_trace():
    x = torch.ones(2000, 3)
    dropped = drop_path(x, 0.25, training=True)
    kept = dropped[:, 0] != 0
    assert torch.equal(dropped[kept], torch.full((int(kept.sum()), 3), 1 / 0.75))
    assert 0.68 < kept.float().mean() < 0.82
    assert drop_path(x, 0.25, training=False) is x
    if not timm_is_importable():
        with installed_if_timm_missing():
            from timm.models.layers import drop_path as shimmed
            assert shimmed is drop_path
        assert "timm" not in sys.modules and "timm.models.layers" not in sys.modules


def test_training_lifts_recall_well_above_chance():
    pytest.importorskip("torchscale")
    from fastmma.mwa.retrieval_experiment import RetrievalSetup, run

    result = run(RetrievalSetup(steps=100, seed=0))
    before, after = result["before"], result["after"]
    assert before["i2t@5"] < 10 and before["t2i@5"] < 10                         # chance is 5 / 120
    for direction in ("i2t", "t2i"):
        assert after[f"{direction}@1"] > before[f"{direction}@1"] + 5
        assert after[f"{direction}@5"] > before[f"{direction}@5"] + 25
    assert result["losses"][-1] < 0.7 * result["losses"][0]
    assert result["trainable"] < 0.2 * result["total"]


def test_cli_prints_recalls_before_and_after(capsys):
    pytest.importorskip("torchscale")
    from fastmma.mwa.cli import add_retrieval_subcommand

    parser = argparse.ArgumentParser(prog="fastmma")
    add_retrieval_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["retrieval", "--steps", "2", "--batch-size", "8"])
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    for label in ("image->text before", "image->text after", "text->image before", "text->image after", "R@10"):
        assert label in printed
