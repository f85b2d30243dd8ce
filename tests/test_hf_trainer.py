"""fastmma.hf_trainer.AdapterTrainer: adapters-only optimizer and checkpoints, resume, and a 2-process run
under `accelerate launch` (CPU, gloo) that ends where one process with the same global batch ends."""
import sys

import pytest
import torch

import fastmma
from fastmma.hf_trainer import AdapterTrainer

from .distributed_harness import REPO_ROOT, child_env, free_port
from .distributed_workers import trainer_arguments, trainer_dataset
from .helpers import tiny_causal_lm


def patched_model():
    model = tiny_causal_lm(seed=0)
    torch.manual_seed(5)
    return fastmma.patch(model, fastmma.MMAConfig(rank=4, groups=2, dropout=0.0))


def adapters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in fastmma.adapter_parameters(model).items()}


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """4 steps of 4 samples in one process; checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("trainer")
    model = patched_model()
    trainer = AdapterTrainer(model=model, args=trainer_arguments(out, per_device_batch=4),
                             train_dataset=trainer_dataset())
    trainer.train()
    return trainer, model, out


def test_only_the_adapters_reach_the_optimizer(single_run):
    trainer, model, _ = single_run
    optimized = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in optimized} == {id(p) for p in fastmma.adapter_parameters(model).values()}
    assert len(optimized) == len(fastmma.adapter_parameters(model))
    decayed = {id(p) for p in trainer.optimizer.param_groups[0]["params"]}
    assert all((p.dim() >= 2) == (id(p) in decayed) for p in optimized)


def test_checkpoints_hold_only_adapters_and_load_with_load_adapters(single_run):
    trainer, model, out = single_run
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    files = {p.name for p in (out / "checkpoint-4").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "trainer_state.json"} <= files
    assert not {"model.safetensors", "pytorch_model.bin", "config.json"} & files
    loaded = fastmma.load_adapters(tiny_causal_lm(seed=0), out / "checkpoint-4")
    trained = adapters(model)
    assert any(not torch.equal(value, adapters(patched_model())[name]) for name, value in trained.items())
    for name, value in adapters(loaded).items():
        assert torch.equal(value, trained[name]), name


def test_resume_from_a_checkpoint_reproduces_the_run(single_run, tmp_path):
    _, model, out = single_run
    resumed = patched_model()
    trainer = AdapterTrainer(model=resumed, args=trainer_arguments(tmp_path, per_device_batch=4),
                             train_dataset=trainer_dataset())
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    for name, value in adapters(resumed).items():
        torch.testing.assert_close(value, adapters(model)[name], rtol=1e-6, atol=1e-7)


def test_rejects_an_unpatched_model(tmp_path):
    with pytest.raises(ValueError, match="patched with fastmma.patch"):
        AdapterTrainer(model=tiny_causal_lm(), args=trainer_arguments(tmp_path, per_device_batch=4))


def test_accelerate_launch_with_two_processes_matches_one_process(single_run, tmp_path):
    import subprocess

    _, model, _ = single_run
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "tests.distributed_workers", "trainer", str(tmp_path)]
    completed = subprocess.run(command, env=child_env(ACCELERATE_USE_CPU="1"), cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=240)
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-5000:]
    records = [torch.load(tmp_path / f"trainer-rank{rank}.pt", weights_only=False) for rank in range(2)]
    for record in records:
        assert record["world_size"] == 2
        assert record["ddp"] == "DistributedDataParallel" and record["find_unused_parameters"] is False
        assert record["optimizer_is_adapters"]
        for name, value in record["final"].items():               # 2 x 2 samples per step == 1 x 4
            torch.testing.assert_close(value, adapters(model)[name], rtol=1e-5, atol=2e-5)
    saved = fastmma.load_adapters(tiny_causal_lm(seed=0), tmp_path / "trainer" / "checkpoint-4")
    for name, value in adapters(saved).items():
        assert torch.equal(value, records[0]["final"][name]), name
