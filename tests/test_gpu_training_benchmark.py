"""benchmarks/gpu/training.py's plumbing on the CPU: tiny presets, torch.cuda's memory counters stubbed.

The script only measures on a CUDA GPU; here it runs its variants (floor, LaVIN-style, fastmma defaults,
recompute_attention=False, checkpointing) on CPU tensors so that a change in fastmma, transformers or the
benchmarks' shared helpers that breaks it fails here rather than on the next GPU machine."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from fastmma.memory import estimate

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "training.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_training_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_so_and_measures_nothing(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_script().main(["--cases", "llama7b"]) is None
    assert "needs a CUDA GPU" in capsys.readouterr().out


def test_rejects_too_few_rounds():
    with pytest.raises(SystemExit):
        load_script().main(["--rounds", "3"])


def test_every_variant_runs_on_tiny_dimensions(monkeypatch, tmp_path):
    script = load_script()
    monkeypatch.setattr(script, "DEVICE", "cpu")
    monkeypatch.setitem(estimate.PRESETS, "llama-7b", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                           num_attention_heads=4, num_key_value_heads=2,
                                                           vocab_size=97, tie_word_embeddings=False))
    counters = dict(is_available=lambda: True, synchronize=lambda: None, reset_peak_memory_stats=lambda: None,
                    memory_allocated=lambda: 0, max_memory_allocated=lambda: 1, max_memory_reserved=lambda: 1,
                    mem_get_info=lambda: (1, 2), empty_cache=lambda: None, get_device_name=lambda: "stub")
    for name, stub in counters.items():
        monkeypatch.setattr(torch.cuda, name, stub)
    monkeypatch.setattr(script, "random_base", _in_fp32(script.random_base))
    monkeypatch.setattr(sys, "argv", ["training.py"])
    out = tmp_path / "gpu.json"
    results = script.main(["--cases", "llama7b", "--batches-7b", "4", "--rounds", "10", "--warmup", "1",
                           "--json", str(out)])
    variants = results["cases"][0]["variants"]
    assert list(variants) == ["hf_no_adapter", "lavin_style", "fastmma", "fastmma_no_recompute_attention",
                              "fastmma_ckpt"]
    for name, row in variants.items():
        assert row["step_ms"]["median_ms"] > 0 and row["step_ms"]["n"] == 10, name
        assert row["peak_bytes"] > 0, name                         # the model's static bytes at least
        assert ("estimated_peak_allocated_bytes" in row) == name.startswith("fastmma"), name
    assert variants["fastmma_ckpt"]["estimated_peak_allocated_bytes"] < variants["fastmma"]["estimated_peak_allocated_bytes"]
    assert out.exists()


def _in_fp32(random_base):
    """The 7B case builds bf16 models; bf16 Conv1d weight gradients (LaVIN-style's adapter) crash some CPUs."""
    def build(preset, dtype, seed=0):
        return random_base(preset, torch.float32 if dtype == torch.bfloat16 else dtype, seed)
    return build
