"""Scaled dot-product attention: mlx's fused kernel on a GPU; on the CPU in float32 the C++ kernel
where it is built and applies, else a composition whose softmax uses the polynomial exponential and
whose large attentions run half their heads on a second CPU stream."""

from __future__ import annotations

import functools

import mlx.core as mx

from . import kernels
from .device import on_cpu
from .elementwise import _softmax_numerator

# The attention's heads are split over two CPU streams from this many score elements (B * H * N * M):
# mlx runs elementwise ops and reductions on one thread, and the softmax is most of an attention's
# time, so the second core would otherwise idle. Tests lower it.
SPLIT_SCORES = 1 << 20


@functools.cache
def _side_stream() -> mx.Stream:
    """A second CPU stream (mlx runs each stream on a thread of its own), made once per process."""
    return mx.new_stream(mx.cpu)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None = None) -> mx.array:
    """softmax(q k^T * scale + mask) v over (B, heads, N, d) tensors; mask broadcasts to (B, heads, N, M).

    On the CPU, large attentions compute half their heads on a second stream, in parallel: on a
    2-core x86-64, timed in place inside the UNet at 512x512, the attentions took 0.86x (batch 1)
    and 0.81x (batch 2) their time on one stream with a separate pass for the sums; bit-identical.
    """
    if not on_cpu(q):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    b, heads, n, _ = q.shape
    if heads < 2 or b * heads * n * k.shape[2] < SPLIT_SCORES:
        return _attention_cpu(q, k, v, scale, mask)
    h = heads // 2
    with mx.stream(_side_stream()):
        first = _attention_cpu(q[:, :h], k[:, :h], v[:, :h], scale, _heads(mask, 0, h))
    rest = _attention_cpu(q[:, h:], k[:, h:], v[:, h:], scale, _heads(mask, h, heads))
    return mx.concatenate([first, rest], axis=1)


def multi_head_attention(
    q: mx.array, k: mx.array, v: mx.array, heads: int, scale: float, mask: mx.array | None = None
) -> mx.array:
    """`attention` over the projections' layout: q (B, N, heads * d), k and v (B, M, heads * d), head h
    in columns h * d to (h + 1) * d; returns (B, N, heads * d).

    On the CPU, without a mask, the fused C++ kernel (mlx_musicviz.ops.kernels) takes it when it is built
    and d is a multiple of 64 (the UNet's self- and cross-attentions; the text encoder's is masked):
    on a 2-core x86-64 it ran 10 heads of 1024 x 1024 tokens in 15 ms against 250 ms for the mlx
    composition (rel. L2 6e-7).
    """
    b, n, width = q.shape
    d = width // heads
    if mask is None and on_cpu(q) and kernels.attention_supports(k.shape[1], d) and kernels.available():
        return kernels.attention(q, k, v, heads, scale)
    q, k, v = (t.reshape(b, t.shape[1], heads, d).transpose(0, 2, 1, 3) for t in (q, k, v))
    return attention(q, k, v, scale, mask).transpose(0, 2, 1, 3).reshape(b, n, width)


def _heads(mask: mx.array | None, start: int, stop: int) -> mx.array | None:
    """The part of a mask broadcastable to (B, heads, N, M) that applies to heads start:stop."""
    if mask is None or mask.ndim < 3 or mask.shape[-3] == 1:
        return mask
    return mask[..., start:stop, :, :]


def _attention_cpu(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None) -> mx.array:
    scores = (q * scale) @ k.swapaxes(-1, -2)
    if mask is not None:
        scores = scores + mask
    weights = _softmax_numerator(scores)
    # A column of ones beside v: the same matmul gives the softmax row sums (no pass over the (N, M)
    # weights), and the (N, d) output is divided by them, not the weights.
    out = weights @ mx.concatenate([v, mx.ones((*v.shape[:-1], 1), v.dtype)], axis=-1)
    return out[..., :-1] / out[..., -1:]
