"""The LaVIN training loop: learning, accumulation, exact resume, crash safety, bad input."""
import json

import pytest
import torch

from fastmma.data.samples import VLSample
from fastmma.optim import parameter_groups, warmup_cosine_factor
from fastmma.train import TrainConfig, batch_indices, train
from fastmma.training_state import LATEST, latest_checkpoint

from .lavin_helpers import solid_image, tiny_lavin

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def colour_samples():
    samples = [VLSample(solid_image(rgb), [("What colour is the image?", name)]) for name, rgb in COLOURS.items()]
    samples += [VLSample(None, [("What is two plus two?", "four")]), VLSample(None, [("Say yes.", "yes")])]
    return samples


def run(tmp_path, name="run", steps=6, stop_after=None, **overrides):
    torch.manual_seed(0)
    model = tiny_lavin(dropout=0.1)
    config = TrainConfig(out_dir=str(tmp_path / name), steps=steps, batch_size=4, lr=3e-3, checkpoint_every=2,
                         **overrides)
    return model, train(model, colour_samples(), config, stop_after=stop_after)


def test_loss_goes_down_and_files_are_written(tmp_path):
    _, result = run(tmp_path, steps=12)
    assert result.losses[-1] < result.losses[0]
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert [entry["step"] for entry in metrics["log"]] == list(range(1, 13))
    assert {"loss", "lr", "tokens_per_second"} <= set(metrics["log"][0])
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert latest_checkpoint(out).name == "checkpoint-000012"
    assert len(list(out.glob("checkpoint-*"))) == 2                      # keep_checkpoints


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path):
    _, uninterrupted = run(tmp_path, "full")
    _, first_half = run(tmp_path, "resumed", stop_after=3)
    assert len(first_half.losses) == 3
    model, resumed = run(tmp_path, "resumed")
    assert resumed.losses == uninterrupted.losses


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    _, whole = run(tmp_path, "whole", steps=3)
    _, accumulated = run(tmp_path, "accumulated", steps=3, micro_batch_size=2)
    torch.testing.assert_close(torch.tensor(accumulated.losses), torch.tensor(whole.losses), rtol=1e-4, atol=1e-5)


def test_crash_while_checkpointing_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    model, _ = run(tmp_path, steps=4)
    out = tmp_path / "run"
    before = latest_checkpoint(out)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(model), "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, steps=6)
    assert latest_checkpoint(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint")]   # no half-written folders
    monkeypatch.undo()
    _, resumed = run(tmp_path, steps=6)                                      # and it resumes from it
    assert len(resumed.losses) == 6


def test_bad_input(tmp_path):
    model = tiny_lavin()
    with pytest.raises(ValueError, match="empty"):
        train(model, [], TrainConfig(out_dir=str(tmp_path / "a"), steps=1))
    long_sample = VLSample(None, [("word " * 300, "yes")])
    with pytest.raises(ValueError, match="max_length"):
        train(model, [long_sample], TrainConfig(out_dir=str(tmp_path / "b"), steps=1, max_length=64))
    result = train(model, colour_samples() + [long_sample],
                   TrainConfig(out_dir=str(tmp_path / "c"), steps=1, batch_size=2, max_length=64,
                               on_bad_sample="skip"))
    assert result.skipped_samples == 1
    with pytest.raises(ValueError, match="answer"):
        VLSample(None, [("a question", "")])
    with pytest.raises(ValueError, match="micro_batch_size"):
        TrainConfig(batch_size=6, micro_batch_size=4)
    with pytest.raises(ValueError, match="needs a CUDA"):
        train(model, colour_samples(), TrainConfig(out_dir=str(tmp_path / "d"), steps=1, precision="fp16"))
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / LATEST).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        train(model, colour_samples(), TrainConfig(out_dir=str(tmp_path / "e"), steps=1))


def test_bf16_autocast_trains(tmp_path):
    _, result = run(tmp_path, steps=3, precision="bf16")
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_schedule_and_groups():
    factors = [warmup_cosine_factor(step, 10, 2) for step in range(10)]
    assert factors[0] == 0.5 and factors[1] == 1.0 and factors[-1] < 0.05
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))
    model = tiny_lavin()
    decay, no_decay = parameter_groups(model)
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])


def test_batches_cover_each_epoch_once():
    seen = [i for step in range(5) for i in batch_indices(step, 4, 10, seed=3)][:10]
    assert sorted(seen) == list(range(10))
    assert batch_indices(2, 4, 10, seed=3) == batch_indices(2, 4, 10, seed=3)
