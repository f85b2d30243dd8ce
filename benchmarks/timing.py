"""Interleaved timing for the end-to-end benchmark scripts (e2e.py, memory.py).

On a shared, noisy machine two variants timed one after the other differ by several percent;
running one step of each per round, in rotating order, spreads the drift over all of them.
"""
from __future__ import annotations

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
