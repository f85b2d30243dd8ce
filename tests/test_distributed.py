"""Multi-process training on the CPU (gloo, 2 processes started by the test): DDP equals one process on the
same global batch, only the adapters are all-reduced, FSDP, `fastmma train` under torchrun, failing ranks."""
import json

import pytest
import torch

import fastmma
from fastmma import distributed
from fastmma.lavin import LaVIN, LaVINConfig
from fastmma.train import TrainConfig, batch_indices, train

from .distributed_harness import launch_ranks, run_torchrun
from .distributed_workers import (MMA_LR, MMA_STEPS, answer_tokens, colour_samples, lavin_train_config, mma_batch,
                                  mma_model, mwa_inputs, mwa_loss, mwa_model)
from .lavin_helpers import tiny_lavin, tiny_llm, tiny_vit, tokenizer

WORKERS = ["-m", "tests.distributed_workers"]
# Weights after a few AdamW steps: Adam divides by sqrt(v), so a gradient entry near 0 turns the
# ~1e-7 rounding of a different summation order into moves of ~1e-6 (the learning rate is 3e-3).
ADAM_ATOL = 2e-5


def assert_tensors_close(actual: dict, expected: dict, what: str, rtol=1e-5, atol=1e-6):
    assert set(actual) == set(expected), what
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=rtol, atol=atol, msg=lambda m: f"{what} {name}: {m}")


def load_records(out, scenario):
    return [torch.load(out / f"{scenario}-rank{rank}.pt", weights_only=False) for rank in range(2)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """SmolLM2's tokenizer saved as tokenizer.json, which a worker loads in well under a second."""
    path = tmp_path_factory.mktemp("tokenizer")
    tokenizer().save_pretrained(path)
    return path


# --- helpers without processes ------------------------------------------------------------------------------

def test_rank_shards_concatenate_to_the_global_batch():
    batch = list(range(8))
    shards = [distributed.rank_shard(batch, rank, 4) for rank in range(4)]
    assert shards == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(ValueError, match="multiple of 3"):
        distributed.rank_shard(batch, 0, 3)
    with pytest.raises(ValueError, match="outside"):
        distributed.rank_shard(batch, 4, 4)


def test_train_rejects_a_batch_the_ranks_cannot_split(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(ValueError, match="TrainConfig.batch_size=4 does not split evenly over 3 processes"):
        train(None, [], TrainConfig(out_dir=str(tmp_path), steps=1, batch_size=4))


def test_single_process_helpers_and_bad_launch_environment(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_distributed() is False
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
    assert distributed.all_reduce_sum([1.5, 2.0]) == [1.5, 2.0]
    with pytest.raises(RuntimeError, match="init_distributed"):
        distributed.wrap_ddp(mma_model())
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="start the job with torchrun"):
        distributed.init_distributed()


def test_lavin_gives_every_trainable_tensor_a_gradient_on_a_text_only_batch():
    adapter = fastmma.MMAConfig(rank=4, groups=2, dropout=0.0)
    config = LaVINConfig(llm_adapter=adapter, vision_adapter=adapter, visual_every=3, visual_hidden=16)
    model = LaVIN(tiny_llm(), tiny_vit(), tokenizer(), config)      # 4 ViT blocks, 1 tap: block 4 never runs
    model.train()
    for samples in (colour_samples()[2:], colour_samples()[:2]):                 # text only, images only
        loss = model([model.encode(s) for s in samples]).loss
        loss.backward()
        missing = [name for name, p in model.trainable_state().items() if p.grad is None]
        assert not missing, missing
        model.zero_grad(set_to_none=True)
    encoded = [model.encode(s) for s in colour_samples()[2:]]
    with torch.no_grad():
        plain = model.llm(**model.batch_inputs(encoded)).loss
    torch.testing.assert_close(model(encoded).loss.detach(), plain)             # the loss's value is unchanged


# --- DDP and FSDP on MMA / MWA ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    job = launch_ranks([*WORKERS, "models", str(out)], out / "logs", timeout_s=240)
    assert job.ok, job.describe()
    return load_records(out, "models")


def single_process_mma(steps: int):
    model = mma_model()
    params = fastmma.adapter_parameters(model)
    optimizer = torch.optim.AdamW(params.values(), lr=MMA_LR)
    losses, grads = [], []
    for step in range(steps):
        input_ids, labels, modality = mma_batch(step)
        loss = model(input_ids=input_ids, labels=labels, modality=modality).loss       # mean over all answer tokens
        loss.backward()
        losses.append(loss.item())
        grads.append({name: p.grad.clone() for name, p in params.items()})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return losses, grads, {name: p.detach().clone() for name, p in params.items()}


def test_ddp_matches_one_process_on_the_same_global_batch(models_run):
    losses, grads, final = single_process_mma(MMA_STEPS)
    _, labels, _ = mma_batch(0)
    assert answer_tokens(labels[:2]) != answer_tokens(labels[2:])         # per-rank means would not do
    for record in models_run:
        torch.testing.assert_close(torch.tensor(record["mma"]["loss"]), torch.tensor(losses), rtol=1e-5, atol=0)
        for step in range(MMA_STEPS):
            assert_tensors_close(record["mma"]["grads"][step], grads[step], f"step {step} gradient")
        assert_tensors_close(record["mma"]["final"], final, "adapter after 3 AdamW steps")
    for name, value in models_run[0]["mma"]["final"].items():            # the ranks stay identical
        assert torch.equal(value, models_run[1]["mma"]["final"][name]), name


def test_ddp_all_reduces_the_adapters_not_the_model(models_run):
    record = models_run[0]["mma"]
    adapter_bytes, model_bytes = record["adapter_bytes"], record["model_bytes"]
    assert adapter_bytes < model_bytes / 10
    assert len(record["bytes"]) == MMA_STEPS and all(n >= 1 for n in record["buckets"])
    for per_step in record["bytes"]:
        assert adapter_bytes <= per_step <= 1.05 * adapter_bytes, (per_step, adapter_bytes, model_bytes)


def test_ddp_mwa_with_an_image_only_rank_and_a_text_only_rank(models_run):
    from fastmma.mwa import adapter_parameters

    model = mwa_model()
    params = adapter_parameters(model)
    optimizer = torch.optim.AdamW(params.values(), lr=MMA_LR)
    for step in range(2):
        loss = sum(mwa_loss(model, inputs, target) for inputs, target in mwa_inputs(step)) / 2
        loss.backward()
        for record in models_run:
            assert record["mwa"]["loss"][step] == pytest.approx(loss.item(), rel=1e-5)
            assert_tensors_close(record["mwa"]["grads"][step], {n: p.grad for n, p in params.items()},
                                 f"MWA step {step} gradient")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_fsdp2_with_the_whole_model_as_one_unit_matches_one_process(models_run):
    losses, grads, final = single_process_mma(2)
    for record in models_run:
        fsdp = record["fsdp2_root"]
        torch.testing.assert_close(torch.tensor(fsdp["loss"]), torch.tensor(losses), rtol=1e-5, atol=0)
        for step in range(2):
            assert_tensors_close(fsdp["grads"][step], grads[step], f"FSDP2 step {step} gradient")
        assert_tensors_close(fsdp["final"], final, "FSDP2 adapter after 2 AdamW steps")


def test_fsdp1_per_decoder_layer_gradients_match_one_process(models_run):
    model = mma_model(chunked_loss=False)
    input_ids, labels, modality = mma_batch(0)
    loss = model(input_ids=input_ids, labels=labels, modality=modality).loss
    loss.backward()
    expected = {name: p.grad for name, p in fastmma.adapter_parameters(model).items()}
    for record in models_run:
        assert record["fsdp1_layers"]["loss"] == pytest.approx(loss.item(), rel=1e-5)
        assert_tensors_close(record["fsdp1_layers"]["grads"], expected, "FSDP1 gradient")


def test_fsdp1_needs_chunked_loss_off_as_documented(models_run):
    # FSDP1 hands the frozen LM head to the forward as a view of a trainable flat parameter.
    for record in models_run:
        assert "chunked_linear_cross_entropy keeps the LM head frozen" in record["fsdp1_chunked_loss_error"]


def test_fsdp2_per_decoder_layer_fails_as_documented(models_run):
    # The modality pass runs every decoder layer a second time per forward; FSDP2 frees a layer's
    # unsharded weights after its first backward, before the modality pass's backward needs the router's.
    for record in models_run:
        assert "setStorage" in record["fsdp2_layers_error"] and "storage of size 0" in record["fsdp2_layers_error"]


# --- fastmma.train and `fastmma train` ----------------------------------------------------------------------

def pure_shards_seed() -> int:
    """A seed whose first global batch puts both pictures on one rank and both text samples on the other."""
    for seed in range(100):
        first = batch_indices(0, 4, 4, seed)
        if set(first[:2]) in ({0, 1}, {2, 3}):
            return seed
    raise AssertionError("no such seed")


@pytest.fixture(scope="module")
def lavin_run(tmp_path_factory, tokenizer_dir):
    out = tmp_path_factory.mktemp("lavin")
    seed = pure_shards_seed()
    job = launch_ranks([*WORKERS, "lavin_train", str(out), str(tokenizer_dir), str(seed)], out / "logs",
                       timeout_s=240)
    assert job.ok, job.describe()
    return seed, job, load_records(out, "lavin_train"), out


def test_train_under_ddp_matches_one_process_and_resumes(lavin_run, tmp_path):
    seed, _, records, _ = lavin_run
    model = tiny_lavin()
    single = train(model, colour_samples(), lavin_train_config(tmp_path / "single", seed))
    for record in records:
        assert len(record["first"]) == 2                                       # stopped, then resumed
        torch.testing.assert_close(torch.tensor(record["second"]), torch.tensor(single.losses), rtol=1e-5, atol=0)
        assert record["second"][:2] == record["first"]
        assert_tensors_close(record["final"], {k: v.detach() for k, v in model.trainable_state().items()},
                             "LaVIN after 4 steps", atol=ADAM_ATOL)


def test_each_rank_runs_its_shard_and_a_text_only_rank_trains(lavin_run):
    seed, _, records, _ = lavin_run
    samples = colour_samples()
    for step in range(4):
        expected = [samples[i].modality for i in batch_indices(step, 4, 4, seed)]
        for rank, record in enumerate(records):
            calls = record["calls"][2 * step:2 * step + 2]                       # micro_batch_size=1: 2 per step
            assert [m for call in calls for m in call] == expected[2 * rank:2 * rank + 2], (step, rank)
    first_step = [sorted(m for call in record["calls"][:2] for m in call) for record in records]
    assert sorted(first_step) == [[0, 0], [1, 1]]                               # one rank saw no image


def test_only_rank_0_reports_and_writes(lavin_run):
    _, job, _, out = lavin_run
    rank0, rank1 = job.ranks
    assert "training:" in rank0.output and "resuming from" in rank0.output
    assert "training:" not in rank1.output and "resuming from" not in rank1.output
    assert sorted(p.name for p in (out / "run").iterdir() if not p.name.startswith(".")) == [
        "checkpoint-000002", "checkpoint-000004", "latest.json", "loss.png", "metrics.json"]


def write_cli_config(tmp_path, tokenizer_dir, name: str) -> str:
    llm_dir = tmp_path / "llm"
    if not llm_dir.exists():
        tiny_llm().save_pretrained(llm_dir)
        tokenizer().save_pretrained(llm_dir)
    adapter = {"rank": 4, "groups": 2, "dropout": 0.0}
    spec = {
        "models": {"llm": {"path": str(llm_dir)},
                   "vision": {"random": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                         "num_attention_heads": 2, "image_size": 32, "patch_size": 8}, "seed": 0}},
        "lavin": {"llm_adapter": adapter, "vision_adapter": adapter, "visual_every": 1, "visual_hidden": 16},
        "data": [{"kind": "shapesqa", "num_samples": 6, "image_size": 32}, {"kind": "text", "num_samples": 6}],
        "train": {"out_dir": str(tmp_path / name), "steps": 3, "batch_size": 4, "lr": 3e-3, "checkpoint_every": 2},
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return str(path)


def test_fastmma_train_under_torchrun_matches_one_process(tmp_path, tokenizer_dir):
    from safetensors.torch import load_file

    from fastmma.cli import main

    assert main(["train", "--config", write_cli_config(tmp_path, tokenizer_dir, "single")]) == 0
    job = run_torchrun(["-m", "fastmma", "train", "--config", write_cli_config(tmp_path, tokenizer_dir, "ddp")],
                       tmp_path / "logs", timeout_s=240)
    agent, rank0, rank1 = job.ranks
    assert agent.returncode == 0, job.describe()
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    torch.testing.assert_close(torch.tensor([e["loss"] for e in ddp["log"]]),
                               torch.tensor([e["loss"] for e in single["log"]]), rtol=1e-5, atol=0)
    assert_tensors_close(load_file(tmp_path / "ddp" / "final" / "adapter_model.safetensors"),
                         load_file(tmp_path / "single" / "final" / "adapter_model.safetensors"), "final adapters",
                         atol=ADAM_ATOL)
    assert "final loss" in rank0.output and "final loss" not in rank1.output
    assert "training:" not in rank1.output


def test_a_rank_that_raises_ends_the_torchrun_job(tmp_path, tokenizer_dir):
    # A long collective timeout: the job must end because the failure is seen, not because a wait timed out.
    job = run_torchrun([*WORKERS, "lavin_train", str(tmp_path), str(tokenizer_dir), "0", "3"], tmp_path / "logs",
                       timeout_s=120, env={"FASTMMA_DIST_TIMEOUT": "600"})
    agent, _, rank1 = job.ranks
    assert agent.returncode != 0
    assert "RuntimeError: injected failure on rank 1 in forward 3" in rank1.output
    assert job.seconds < 60, job.describe()


def test_a_rank_that_raises_ends_its_peers_without_a_launcher(tmp_path, tokenizer_dir):
    # No agent to stop rank 0: it is blocked in a collective with the rank that died, and gloo fails it.
    job = launch_ranks([*WORKERS, "lavin_train", str(tmp_path), str(tokenizer_dir), "0", "3"], tmp_path / "logs",
                       timeout_s=120, kill_peers_after_s=90)
    rank0, rank1 = job.ranks
    assert rank1.returncode == 1 and "injected failure on rank 1 in forward 3" in rank1.output
    assert rank0.returncode == 1 and not rank0.killed, job.describe()
    assert job.seconds < 60, job.describe()
