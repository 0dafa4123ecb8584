"""Timing rule shared by the benchmark and its PyTorch reference.

Imports nothing from mlx or this package: the reference's child process loads this file by path
(benchmarks/torch_reference.py) so that it never runs mlx_musicviz/__init__.py.
"""

from __future__ import annotations

import statistics
import time


def call_seconds(fn) -> float:
    """Seconds of one call of `fn`, which must evaluate its work (mlx is lazy)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn, runs: int) -> float:
    """Seconds: median of `runs` timed calls after one warm-up call. `fn` must evaluate its work."""
    fn()
    return statistics.median(call_seconds(fn) for _ in range(max(runs, 1)))
