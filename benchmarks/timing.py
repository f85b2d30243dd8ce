"""Interleaved timing for the end-to-end benchmark scripts (e2e.py, memory.py).

On a shared, noisy machine two variants timed one after the other differ by several percent;
running one step of each per round, in rotating order, spreads the drift over all of them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import statistics
import time


def interleaved(steps: dict, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of one call of each step per round, in rotating order, after `warmup` untimed rounds."""
    names = list(steps)
    times = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name]()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def summary(seconds: list[float]) -> dict:
    """Median, inter-quartile range and extremes of a list of timings, in milliseconds."""
    q1, median, q3 = statistics.quantiles(seconds, n=4)
    return dict(median_ms=median * 1e3, q1_ms=q1 * 1e3, q3_ms=q3 * 1e3, min_ms=min(seconds) * 1e3,
                max_ms=max(seconds) * 1e3, n=len(seconds))


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict:
    """Median and inter-quartile range of the per-round ratios (the two variants ran in the same round)."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    return dict(median=median, q1=q1, q3=q3, n=len(ratios))


def keep_freed_memory() -> str:
    """glibc malloc: keep freed memory in the process, so that no step pays page faults for fresh memory.

    By default glibc serves large allocations (the [tokens, vocab] logits, ~200 MB at SmolLM2 B=4 L=256)
    with fresh mmap'd pages and returns them to the OS when freed, so every step faults them in and
    zeroes them again: a cost of the step on CPU that varies with the host's memory traffic, and that a
    GPU caching allocator does not have. Raises SystemExit where mallopt is unavailable or refuses.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = getattr(libc, "mallopt", None)
    m_trim_threshold, m_mmap_threshold = -1, -3
    if mallopt is None or not (mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, 2 ** 31 - 1)):
        raise SystemExit("--keep-freed-memory needs glibc's mallopt (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)")
    return "glibc, freed memory kept (mallopt M_MMAP_THRESHOLD=1 GiB, M_TRIM_THRESHOLD=2 GiB)"
