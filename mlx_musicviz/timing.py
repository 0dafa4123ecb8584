"""Timing rule shared by the benchmark and its PyTorch reference.

Imports nothing from mlx or this package: the reference's child process loads this file by path
(benchmarks/torch_reference.py) so that it never runs mlx_musicviz/__init__.py.
"""

from __future__ import annotations

import statistics
import time


def median_time(fn, runs: int) -> float:
    """Seconds: median of `runs` timed calls after one warm-up call. `fn` must evaluate its work."""
    fn()
    times = []
    for _ in range(max(runs, 1)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
