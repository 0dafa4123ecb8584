"""Which path an operation takes: the CPU paths are for float32 on mlx's CPU device; everything else
(a GPU, half precision) takes mlx's own kernels, and so does everything inside `differentiable()`."""

from __future__ import annotations

import contextlib
import threading

import mlx.core as mx

_local = threading.local()


@contextlib.contextmanager
def differentiable():
    """mlx's own operations inside the block, as on a GPU: they all have gradients, while the CPU fast
    paths (bit tricks for exp, the C++ kernels) do not. Training differentiates through the models."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


def differentiating() -> bool:
    """Whether this thread is inside `differentiable()`."""
    return getattr(_local, "depth", 0) > 0


def on_cpu(x: mx.array) -> bool:
    """Whether x takes the CPU fast paths (float32 on the CPU device, outside `differentiable()`)."""
    return mx.default_device() == mx.cpu and x.dtype == mx.float32 and not differentiating()


def default_dtype(device=None) -> mx.Dtype:
    """The compute dtype a model runs in unless told otherwise, on `device` (default: mlx's): float16 on
    a GPU (Metal or CUDA; half the memory traffic, and on the one GPU measured float16 frames were as fast
    as bfloat16's or faster), float32 on the CPU, where mlx has no half-precision BLAS."""
    device = mx.default_device() if device is None else device
    return mx.float32 if device == mx.cpu else mx.float16


def prefers_quantized_matmul() -> bool:
    """Whether quantized layers multiply their packed weights directly (mlx's quantized matmul, fast on
    a GPU) rather than unpacking them to a float kernel first (faster on the CPU)."""
    return mx.default_device() != mx.cpu
