"""GELU, SiLU, GEGLU and the softmax's exponential, with CPU fast paths.

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

import mlx.core as mx
import mlx.nn as nn

from . import kernels
from .device import on_cpu

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


def gelu(x: mx.array) -> mx.array:
    """Exact (erf) GELU, as torch.nn.functional.gelu."""
    return _gelu_cpu(x) if on_cpu(x) else nn.gelu(x)


def geglu(x: mx.array) -> mx.array:
    """h * gelu(gate) for x = [h | gate] along its last axis (GEGLU's projection): (..., 2D) -> (..., D).

    On the CPU in float32 the C++ kernel (mlx_musicviz.ops.kernels) does the split, the GELU and the
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
