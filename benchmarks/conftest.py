"""Benchmark-wide set-up, recorded with every result.

- Idle OpenMP threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE unless already set): on a
  machine shared with other jobs, spinning threads fight those jobs for the cores and timings swing
  by 10-50x. It must be set before torch loads its OpenMP runtime, hence here.
- Every core, unless FASTMMA_BENCH_THREADS says otherwise.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("FASTMMA_BENCH_THREADS", os.cpu_count() or 1)))
