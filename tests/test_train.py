"""The LaVIN training loop: learning, accumulation, exact resume, crash safety, bad input."""
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from fastmma.data.samples import VLSample
from fastmma.optim import parameter_groups, warmup_cosine_factor
from fastmma.train import TrainConfig, batch_indices, train
from fastmma.training_state import LATEST, OPTIMIZER_STATE, TRAINER_STATE, latest_checkpoint

from .lavin_helpers import solid_image, tiny_lavin

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def colour_samples():
    samples = [VLSample(solid_image(rgb), [("What colour is the image?", name)]) for name, rgb in COLOURS.items()]
    samples += [VLSample(None, [("What is two plus two?", "four")]), VLSample(None, [("Say yes.", "yes")])]
    return samples


def run(tmp_path, name="run", stop_after=None, resume=True, **overrides):
    torch.manual_seed(0)
    model = tiny_lavin(dropout=0.1)
    settings = {"steps": 6, "batch_size": 4, "lr": 3e-3, "checkpoint_every": 2, **overrides}
    config = TrainConfig(out_dir=str(tmp_path / name), **settings)
    return model, train(model, colour_samples(), config, resume=resume, stop_after=stop_after)


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
    model, _ = run(tmp_path, steps=6, stop_after=4)
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


def test_resume_refuses_changed_training_settings(tmp_path):
    run(tmp_path, steps=4, stop_after=2)
    with pytest.raises(ValueError, match=r"lr 0\.003 saved vs 0\.05 now; max_grad_norm None saved vs 1\.0 now; "
                                         r"seed 0 saved vs 7 now.*--no-resume"):
        run(tmp_path, steps=4, lr=0.05, max_grad_norm=1.0, seed=7)
    with pytest.raises(ValueError, match="steps 4 saved vs 6 now"):
        run(tmp_path, steps=6)
    # bookkeeping, memory settings and (with steps given) epochs may change
    _, resumed = run(tmp_path, steps=4, checkpoint_every=3, keep_checkpoints=1, on_bad_sample="skip",
                     micro_batch_size=2, epochs=2.0)
    assert len(resumed.losses) == 4
    _, restarted = run(tmp_path, steps=4, seed=7, resume=False)
    assert len(restarted.losses) == 4


def test_a_failed_checkpoint_replacement_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    run(tmp_path, steps=4)
    out = tmp_path / "run"
    weights = (out / "checkpoint-000004" / "adapter_model.safetensors").read_bytes()
    real_replace, failed = os.replace, []

    def crash_on_first_rename_onto_it(source, target):
        if Path(target).name == "checkpoint-000004" and not failed:
            failed.append(source)
            raise OSError("crash while renaming")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", crash_on_first_rename_onto_it)
    with pytest.raises(OSError, match="crash while renaming"):
        run(tmp_path, steps=4, checkpoint_every=4, resume=False)
    monkeypatch.undo()
    assert latest_checkpoint(out).name == "checkpoint-000004"
    assert (out / "checkpoint-000004" / "adapter_model.safetensors").read_bytes() == weights
    run(tmp_path, steps=4, checkpoint_every=4, resume=False)                 # now the replacement goes through
    assert json.loads((out / "checkpoint-000004" / TRAINER_STATE).read_text())["config"]["checkpoint_every"] == 4
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("field, value", [
    ("steps", -1), ("steps", 0), ("steps", True), ("epochs", 0), ("batch_size", 2.0), ("micro_batch_size", 0),
    ("micro_batch_size", "2"), ("lr", "1e-3"), ("lr", 0), ("warmup_steps", -1), ("weight_decay", -0.1),
    ("betas", [0.9]), ("betas", (0.9, 1.0)), ("max_grad_norm", -1.0), ("gradient_checkpointing", "false"),
    ("checkpoint_every", 0), ("keep_checkpoints", 0), ("max_length", 0), ("seed", "7"), ("seed", True)])
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=rf"^TrainConfig\.{field}={re.escape(repr(value))} must be"):
        TrainConfig(**{field: value})


def test_train_config_takes_none_where_it_picks_a_default():
    config = TrainConfig(steps=None, lr=None, warmup_steps=None, micro_batch_size=None, max_grad_norm=None,
                         betas=[0.8, 0.9])
    assert config.betas == (0.8, 0.9) and TrainConfig(warmup_steps=0, weight_decay=0).warmup_steps == 0


def test_out_dir_that_is_a_file_is_refused_before_training(tmp_path):
    model = tiny_lavin()
    (tmp_path / "file").write_text("keep me")
    for out_dir in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(ValueError, match="TrainConfig.out_dir .* is an existing file"):
            train(model, colour_samples(), TrainConfig(out_dir=str(out_dir), steps=1, batch_size=2))
    assert (tmp_path / "file").read_text() == "keep me"


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run of 4 steps stopped after 2, with checkpoint-000002."""
    folder = tmp_path_factory.mktemp("stopped")
    run(folder, steps=4, stop_after=2)
    return folder / "run"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def _drop_param_groups(path: Path) -> None:
    saved = json.loads(path.read_text())
    del saved["param_groups"]
    path.write_text(json.dumps(saved))


DAMAGES = {
    "truncated optimizer": (OPTIMIZER_STATE, _truncate),
    "truncated adapters": ("adapter_model.safetensors", _truncate),
    "broken trainer state": (TRAINER_STATE, lambda path: path.write_text('{"step": 2, "losses": "\x01')),
    "no param_groups": (TRAINER_STATE, _drop_param_groups),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_checkpoint_names_the_file_and_the_way_out(tmp_path, stopped_run, damage):
    shutil.copytree(stopped_run, tmp_path / "run")
    file_name, spoil = DAMAGES[damage]
    spoil(tmp_path / "run" / "checkpoint-000002" / file_name)
    with pytest.raises(ValueError, match=rf"checkpoint-000002/{re.escape(file_name)} .*--no-resume \(resume=False\)"):
        run(tmp_path, steps=4)


@pytest.mark.parametrize("pointer", ['{"checkpoint": 5}', '["checkpoint-000002"]', '{"checkpoint": "../x"}',
                                     '{"checkpoint": "checkpoint-000009"}'])
def test_damaged_latest_json_names_the_file_and_the_way_out(tmp_path, stopped_run, pointer):
    shutil.copytree(stopped_run, tmp_path / "run")
    (tmp_path / "run" / LATEST).write_text(pointer)
    with pytest.raises((ValueError, FileNotFoundError), match=rf"{LATEST} .*--no-resume"):
        run(tmp_path, steps=4)


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
