"""Which path an operation takes: the CPU paths are for float32 on mlx's CPU device; everything else
(a GPU, half precision) takes mlx's own kernels."""

from __future__ import annotations

import mlx.core as mx


def on_cpu(x: mx.array) -> bool:
    """Whether x takes the CPU fast paths (float32 on the CPU device)."""
    return mx.default_device() == mx.cpu and x.dtype == mx.float32


def prefers_quantized_matmul() -> bool:
    """Whether quantized layers multiply their packed weights directly (mlx's quantized matmul, fast on
    a GPU) rather than unpacking them to a float kernel first (faster on the CPU)."""
    return mx.default_device() != mx.cpu
