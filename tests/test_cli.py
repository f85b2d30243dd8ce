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
    capsys.readouterr()
    assert_rejected_at_parse_time(["demo", "--steps", "0"], "argument --steps: must be a positive integer", capsys)


def assert_rejected_at_parse_time(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def assert_reported(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["generate", "--adapters", "x", "--prompt", "hi", "--max-new-tokens", "0"], "argument --max-new-tokens: must be"),
    (["eval", "--adapters", "x", "--data", "{}", "--max-new-tokens", "-2"], "argument --max-new-tokens: must be"),
    (["demo", "--steps", "-1"], "argument --steps: must be a positive integer"),
    (["retrieval", "--lr", "-1"], "argument --lr: must be a positive number"),
    (["retrieval", "--lr", "nan"], "argument --lr: must be a positive number")])
def test_non_positive_numbers_are_rejected_at_parse_time(argv, message, capsys):
    assert_rejected_at_parse_time(argv, message, capsys)


def test_existing_outputs_are_refused_before_the_run(tmp_path, monkeypatch, capsys):
    import fastmma.demo
    import fastmma.mwa.cli

    def must_not_run(*args, **kwargs):
        raise AssertionError("ran although the output path is unusable")

    monkeypatch.setattr(fastmma.demo, "build_demo_model", must_not_run)
    monkeypatch.setattr(fastmma.mwa.cli, "run", must_not_run)
    existing = tmp_path / "results.json"
    existing.write_text("{}")
    assert_reported(["demo", "--out", str(existing)], "is an existing file", capsys)
    assert_reported(["retrieval", "--out", str(existing)], "already exists", capsys)
    assert existing.read_text() == "{}"


VALID_MODELS = {"llm": "default", "vision": {"random": {}}}


@pytest.mark.parametrize("spec, message", [
    ("fast", "must be a JSON object with the keys ['models', 'data', 'train']"),
    ([1, 2], "must be a JSON object with the keys ['models', 'data', 'train']"),
    ({"models": VALID_MODELS, "data": [], "train": {}, "lavn": {}}, "has unknown key(s) ['lavn']"),
    ({"models": [], "data": [], "train": {}}, '"models" must be a JSON object with the keys [\'llm\', \'vision\']'),
    ({"models": {"vision": {"random": {}}}, "data": [], "train": {}}, '"models" lacks [\'llm\']'),
    ({"models": VALID_MODELS, "data": [], "train": "fast"}, '"train" must be a JSON object of TrainConfig fields'),
    ({"models": VALID_MODELS, "data": [], "train": {"stepz": 3}}, "TrainConfig: unknown field(s) ['stepz']"),
    ({"models": VALID_MODELS, "data": [], "train": {"steps": -1}}, "TrainConfig.steps=-1 must be a positive"),
    ({"models": VALID_MODELS, "data": [], "train": {}, "lavin": {"visual_evry": 1}},
     "LaVINConfig: unknown field(s) ['visual_evry']"),
    ({"models": VALID_MODELS, "data": [], "train": {}, "lavin": {"visual_every": "4"}},
     "LaVINConfig.visual_every='4' must be a positive integer"),
    ({"models": {"llm": {"path": "/no/such/llm"}, "vision": {"random": {}}}, "data": [], "train": {}},
     "llm path '/no/such/llm' is not an existing folder"),
    ({"models": {"llm": "default", "vision": {"path": "/no/such/vit"}}, "data": [], "train": {}},
     "vision path '/no/such/vit' is not an existing folder"),
    ({"models": {"llm": "default", "vision": {"random": {"hidden_sz": 3}}}, "data": [], "train": {}},
     "vision spec \"random\" has unknown field(s) ['hidden_sz']")])
def test_bad_train_config_files_are_reported(tmp_path, capsys, spec, message):
    if isinstance(spec, dict) and isinstance(spec["train"], dict):
        spec["train"] = {"out_dir": str(tmp_path / "out"), **spec["train"]}
    (tmp_path / "run.json").write_text(json.dumps(spec))
    assert_reported(["train", "--config", str(tmp_path / "run.json")], message, capsys)
    assert not (tmp_path / "out").exists()


def test_config_and_data_that_are_not_json_are_reported(tmp_path, capsys):
    (tmp_path / "folder.json").mkdir()
    assert_reported(["train", "--config", str(tmp_path / "folder.json")], "is a folder", capsys)
    for data in (str(tmp_path), str(tmp_path / "image.png")):
        assert_reported(["eval", "--adapters", str(tmp_path), "--data", data],
                        "--data must be a JSON data spec or the path of a .json file holding one", capsys)


@pytest.mark.parametrize("num_samples", ["4", -3, 2.5])
def test_bad_numbers_in_a_data_spec_are_named(tmp_path, capsys, num_samples):
    data = json.dumps({"kind": "shapesqa", "num_samples": num_samples})
    assert_reported(["eval", "--adapters", str(tmp_path), "--data", data],
                    '"num_samples" must be an integer >= 0', capsys)


def test_resuming_with_other_settings_is_reported(tmp_path, local_models, capsys):
    out = tmp_path / "run"
    config = {"models": local_models, "lavin": {"visual_every": 2, "visual_hidden": 16},
              "data": [{"kind": "text", "num_samples": 4}],
              "train": {"out_dir": str(out), "steps": 1, "batch_size": 2, "lr": 1e-3}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    assert main(["train", "--config", str(tmp_path / "run.json")]) == 0
    config["train"].update(batch_size=4, lr=0.05, seed=7)
    (tmp_path / "run.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert_reported(["train", "--config", str(tmp_path / "run.json")],
                    "batch_size 2 saved vs 4 now; lr 0.001 saved vs 0.05 now; seed 0 saved vs 7 now", capsys)
    assert main(["train", "--config", str(tmp_path / "run.json"), "--no-resume"]) == 0
