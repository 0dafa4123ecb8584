"""GELU, SiLU and attention softmax, with CPU fast paths.

On the CPU backend mlx evaluates transcendental functions one scalar at a time (measured on a
2-core x86-64: erf 38 ns and exp 19 ns per element, against 0.8 ns for a multiply), which made
GELU, SiLU and the attention softmax 45% of the UNet's time. On the CPU these functions are
built here from multiplies and adds that `mx.compile` fuses: erf as a rational polynomial
(odd/even, clamped at |x| = 4 where float32 erf is exactly +-1) and exp as 2^n * 2^f with a
degree-7 polynomial for 2^f and n put straight into the float exponent. Both stay within a few
float32 ulps of the exact functions. On a GPU mlx's own kernels are fast and are used as is.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

# erf(x) ~= x * P(x^2) / Q(x^2) on [-4, 4]: minimax coefficients for float32 (highest power first).
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)
_LOG2E = 1.4426950408889634
_LN2 = math.log(2.0)


def _horner(x: mx.array, coefficients: tuple[float, ...]) -> mx.array:
    acc = coefficients[0]
    for c in coefficients[1:]:
        acc = acc * x + c
    return acc


def _erf_poly(x: mx.array) -> mx.array:
    x = mx.clip(x, -4.0, 4.0)
    x2 = x * x
    return x * _horner(x2, _ERF_P) / _horner(x2, _ERF_Q)


def _exp_poly(x: mx.array) -> mx.array:
    """exp(x) for float32 x; inputs below -87 give ~0 (as exp underflows), above +87 saturate."""
    t = mx.clip(x * _LOG2E, -126.0, 126.0)
    n = mx.floor(t + 0.5)
    f = (t - n) * _LN2  # |f| <= ln2 / 2
    p = 1.0
    for k in range(7, 0, -1):  # Taylor series of e^f, Horner form: 1 + f(1 + f/2(1 + f/3 ...))
        p = 1.0 + p * f / k
    two_n = ((n.astype(mx.int32) + 127) << 23).view(mx.float32)
    return p * two_n


@mx.compile
def _gelu_cpu(x: mx.array) -> mx.array:
    return 0.5 * x * (1.0 + _erf_poly(x * 0.7071067811865476))


@mx.compile
def _silu_cpu(x: mx.array) -> mx.array:
    return x / (1.0 + _exp_poly(-x))


@mx.compile
def _softmax_cpu(x: mx.array) -> mx.array:
    e = _exp_poly(x - mx.max(x, axis=-1, keepdims=True))
    return e / mx.sum(e, axis=-1, keepdims=True)


def _on_cpu(x: mx.array) -> bool:
    return mx.default_device() == mx.cpu and x.dtype == mx.float32


def gelu(x: mx.array) -> mx.array:
    """Exact (erf) GELU, as torch.nn.functional.gelu."""
    return _gelu_cpu(x) if _on_cpu(x) else nn.gelu(x)


def silu(x: mx.array) -> mx.array:
    """x * sigmoid(x)."""
    return _silu_cpu(x) if _on_cpu(x) else nn.silu(x)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None = None) -> mx.array:
    """softmax(q k^T * scale + mask) v over (B, heads, N, d) tensors."""
    if not _on_cpu(q):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    scores = (q * scale) @ k.swapaxes(-1, -2)
    if mask is not None:
        scores = scores + mask
    return _softmax_cpu(scores) @ v
