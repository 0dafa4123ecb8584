"""GELU, SiLU and attention softmax, with CPU fast paths.

On the CPU backend mlx evaluates transcendental functions one scalar at a time (measured on a
2-core x86-64: erf 38 ns and exp 19 ns per element, against 0.8 ns for a multiply), which made
GELU, SiLU and the attention softmax 45% of the UNet's time. On the CPU these functions are
built here from multiplies and adds that `mx.compile` fuses: erf as a rational polynomial
(odd/even, clamped at |x| = 4 where float32 erf is exactly +-1) and exp as 2^n * 2^f, n put
straight into the float exponent and 2^f a degree-6 polynomial. Both stay within a few float32
ulps of the exact functions. On a GPU mlx's own kernels are fast and are used as is.

The shape of the arithmetic matters as much as its amount: mlx fuses a chain of elementwise ops
into one CPU kernel only up to a depth of 11 ops, and each extra kernel is one more pass over
memory (~1.5 ns per element each here). So the polynomials are evaluated in Estrin's form (depth
~log2 of the degree, not the degree) and rounding adds and subtracts 1.5 * 2^23 instead of
calling floor (a scalar libm call): SiLU went from 7 kernels (~15 ns/element) to 2-3 (~7 ns).
"""

from __future__ import annotations

import functools

import mlx.core as mx
import mlx.nn as nn

from .. import kernels

# erf(x) ~= x * P(x^2) / Q(x^2) on [-4, 4]: minimax coefficients for float32 (lowest power first).
_ERF_P = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04, -5.69250639462346e-05,
          -2.10102402082508e-06, 2.77068142495902e-08, -2.72614225801306e-10)
_ERF_Q = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03, -2.13374055278905e-04,
          -1.45660718464996e-05)
# 2^f on [-1/2, 1/2], degree 6: least squares on Chebyshev nodes (max relative error 2.6e-9).
_EXP2 = (0.9999999999595485, 0.6931472067106207, 0.2402265121359523, 0.0555032721420935,
         0.0096180256029431, 0.0013400432165303, 0.0001546973197708)
_LOG2E = 1.4426950408889634
_ROUND = 12582912.0  # 1.5 * 2^23: t + _ROUND - _ROUND rounds a float32 |t| < 2^22 to the nearest integer


def _estrin(x: mx.array, coefficients: tuple[float, ...]) -> mx.array:
    """sum(c_k x^k) (lowest power first) in Estrin's scheme: pairs c_2i + c_2i+1 x, then in x^2, ..."""
    terms = [c0 + c1 * x for c0, c1 in zip(coefficients[::2], coefficients[1::2])]
    if len(coefficients) % 2:
        terms.append(coefficients[-1])
    power = x * x
    while len(terms) > 1:
        paired = [lo + power * hi for lo, hi in zip(terms[::2], terms[1::2])]
        terms = paired + ([terms[-1]] if len(terms) % 2 else [])
        power = power * power
    return terms[0]


def _erf_poly(x: mx.array) -> mx.array:
    x = mx.clip(x, -4.0, 4.0)
    x2 = x * x
    return x * _estrin(x2, _ERF_P) / _estrin(x2, _ERF_Q)


def _exp_poly(x: mx.array) -> mx.array:
    """exp(x) for float32 x; inputs below -87.7 give exactly 0, above +87.3 saturate (2^126).

    Clipping x * log2(e) at -127 makes n = -127, whose exponent field is 0, so the result is exactly
    0 rather than the smallest normal: a causal mask's exp must be 0, as any tiny value divided by
    the softmax sum is a denormal, and matmuls over denormals ran 30x slower here (16 heads x 77^2:
    12 ms against 0.2 ms).
    """
    t = mx.clip(x * _LOG2E, -127.0, 126.0)
    n = (t + _ROUND) - _ROUND
    two_n = ((n.astype(mx.int32) + 127) << 23).view(mx.float32)
    return _estrin(t - n, _EXP2) * two_n


@mx.compile
def _gelu_cpu(x: mx.array) -> mx.array:
    return 0.5 * x * (1.0 + _erf_poly(x * 0.7071067811865476))


def silu_poly(x: mx.array) -> mx.array:
    """SiLU from multiplies and adds, to be fused inside a compiled function (CPU, float32)."""
    return x / (1.0 + _exp_poly(-x))


_silu_cpu = mx.compile(silu_poly)


@mx.compile
def _softmax_numerator(x: mx.array) -> mx.array:
    """exp(x - max(x)) over the last axis: the softmax before its division by the row sums."""
    return _exp_poly(x - mx.max(x, axis=-1, keepdims=True))


def on_cpu(x: mx.array) -> bool:
    """Whether x takes the CPU fast paths (float32 on the CPU device)."""
    return mx.default_device() == mx.cpu and x.dtype == mx.float32


def gelu(x: mx.array) -> mx.array:
    """Exact (erf) GELU, as torch.nn.functional.gelu."""
    return _gelu_cpu(x) if on_cpu(x) else nn.gelu(x)


def geglu(x: mx.array) -> mx.array:
    """h * gelu(gate) for x = [h | gate] along its last axis (GEGLU's projection): (..., 2D) -> (..., D).

    On the CPU in float32 the C++ kernel (mlx_musicviz.kernels) does the split, the GELU and the
    product in one pass on both cores where it is built: at 4096 x 1280 gates on a 2-core x86-64,
    2.8 ms against 24 ms for the mlx composition.
    """
    if on_cpu(x) and kernels.geglu_supports(x.shape[-1]) and kernels.available():
        return kernels.geglu(x)
    h, gate = mx.split(x, 2, axis=-1)
    return h * gelu(gate)


def silu(x: mx.array) -> mx.array:
    """x * sigmoid(x)."""
    return _silu_cpu(x) if on_cpu(x) else nn.silu(x)


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

    On the CPU, without a mask, the fused C++ kernel (mlx_musicviz.kernels) takes it when it is built
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
