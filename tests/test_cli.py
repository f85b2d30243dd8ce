"""The command line end to end on tiny local models: train from a config, generate, eval, errors."""
import json

import pytest

from fastmma.cli import main

from .lavin_helpers import solid_image, tiny_llm, tiny_vit, tokenizer


@pytest.fixture
def local_models(tmp_path):
    llm_dir, vit_dir = tmp_path / "llm", tmp_path / "vit"
    tiny_llm().save_pretrained(llm_dir)
    tokenizer().save_pretrained(llm_dir)
    tiny_vit().save_pretrained(vit_dir)
    return {"llm": {"path": str(llm_dir)}, "vision": {"path": str(vit_dir)}}


def test_train_generate_eval(tmp_path, local_models, capsys):
    out = tmp_path / "run"
    config = {"models": local_models, "lavin": {"visual_every": 2, "visual_hidden": 16},
              "data": [{"kind": "shapesqa", "num_samples": 8, "image_size": 32},
                       {"kind": "text", "num_samples": 4}],
              "train": {"out_dir": str(out), "steps": 2, "batch_size": 4, "lr": 1e-3}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    assert main(["train", "--config", str(tmp_path / "run.json")]) == 0
    assert (out / "final" / "adapter_model.safetensors").is_file() and (out / "metrics.json").is_file()
    image = tmp_path / "red.png"
    solid_image((255, 0, 0)).save(image)
    capsys.readouterr()
    assert main(["generate", "--adapters", str(out / "final"), "--prompt", "What colour is the shape?",
                 "--image", str(image), "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip() != ""
    data = json.dumps({"kind": "shapesqa", "num_samples": 4, "seed": 1, "split": "heldout", "image_size": 32})
    assert main(["eval", "--adapters", str(out / "final"), "--data", data, "--max-new-tokens", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["samples"] == 4 and 0.0 <= result["exact_match"] <= 1.0


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["train", "--config", str(tmp_path / "bad.json")]) == 2
    assert "lacks" in capsys.readouterr().err
    assert main(["generate", "--adapters", str(tmp_path), "--prompt", "hi"]) == 2
    assert "adapter_config.json" in capsys.readouterr().err


def test_demo_passes_steps_and_seed_and_refuses_zero_steps(monkeypatch, capsys):
    import fastmma.demo

    calls = []
    monkeypatch.setattr(fastmma.demo, "run_demo", lambda out, settings: calls.append((out, settings)))
    assert main(["demo", "--out", "somewhere"]) == 0
    assert main(["demo", "--out", "elsewhere", "--steps", "5", "--seed", "2", "--precision", "fp32"]) == 0
    assert calls[0] == ("somewhere", fastmma.demo.DemoSettings())
    assert (calls[1][1].steps, calls[1][1].seed, calls[1][1].precision) == (5, 2, "fp32")
    assert main(["demo", "--steps", "0"]) == 2
    assert "at least one training step" in capsys.readouterr().err
