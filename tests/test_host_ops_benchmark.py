"""benchmarks/host_ops.py counts every aten op of a step, the modality pass's among the forward's."""
import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "host_ops.py"


def test_counts_more_ops_for_fastmma_than_the_floor(monkeypatch):
    monkeypatch.setenv("FASTMMA_BACKEND", "auto")                 # the script sets it; monkeypatch restores it
    spec = importlib.util.spec_from_file_location("host_ops_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        results = module.main(["--backend", "torch", "--attn", "sdpa", "--rounds", "1"])
    finally:
        torch.set_num_threads(threads)                                # the script runs on one thread
    floor, fast, keep = results["floor"], results["fastmma"], results["no_recompute_attention"]
    assert floor["modality_pass_ops"] == 0 and 0 < fast["modality_pass_ops"] < fast["forward_ops"]
    assert fast["forward_ops"] > floor["forward_ops"]
    assert fast["backward_ops"] > keep["backward_ops"] > floor["backward_ops"]      # the replay runs ops again
    assert all(row["step_ms"] > 0 for row in results.values())
