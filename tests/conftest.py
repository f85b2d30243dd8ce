"""Test-wide set-up. TRITON_INTERPRET must be set before any @triton.jit function is defined,
so it is set here, before fastmma is imported, to run the Triton kernels on the CPU.

FASTMMA_TEST_DEVICE=cuda runs the Triton kernel tests (tests/kernels/test_triton_*.py) on a CUDA GPU
instead, compiled, without the interpreter:

    FASTMMA_TEST_DEVICE=cuda python3 -m pytest tests/kernels -k triton
"""
import os

if os.environ.get("FASTMMA_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import fastmma  # noqa: E402,F401

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
