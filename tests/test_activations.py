"""The CPU fast paths of GELU, SiLU and softmax against float64 (they replace mlx's scalar exp/erf)."""

import mlx.core as mx
import numpy as np
import pytest
from scipy.special import erf

import mlx_musicviz  # noqa: F401  (first, as users do: the BLAS preload)
from mlx_musicviz.ops import attention, gelu, on_cpu, sdpa, silu


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(0)
    edges = [-200, -100, -88, -87, -30, -9, -4.01, -4, -1e-3, -1e-30, 0, 1e-30, 1e-3, 4, 4.01, 9, 30, 87, 88, 100, 200]
    return np.concatenate([np.linspace(-12, 12, 200_001), rng.normal(0, 3, 100_000), edges]).astype(np.float32)


def _worst(y: mx.array, ref: np.ndarray, floor: float) -> float:
    """Largest error in units of float32 spacing at max(|ref|, floor)."""
    err = np.abs(np.array(y).astype(np.float64) - ref)
    return float(np.max(err / (np.spacing(np.float32(1.0)) * np.maximum(np.abs(ref), floor))))


@pytest.mark.usefixtures("cpu_device")
def test_the_fast_paths_are_taken_here():
    assert on_cpu(mx.zeros(1))  # otherwise the comparisons below would test mlx's own kernels


def test_silu_within_a_few_ulps():
    x = _inputs()
    ref = x.astype(np.float64) / (1 + np.exp(-x.astype(np.float64)))
    assert _worst(silu(mx.array(x)), ref, 1e-3) < 8


def test_gelu_within_a_few_ulps():
    x = _inputs()
    ref = 0.5 * x.astype(np.float64) * (1 + erf(x.astype(np.float64) / np.sqrt(2)))
    # 1 + erf(x) cancels for x << 0 (in float32 PyTorch too): the tail is held to absolute error.
    assert _worst(gelu(mx.array(x)), ref, 1.0) < 16


@pytest.mark.parametrize("spread", [1.0, 10.0, 100.0])
def test_attention_softmax_matches_float64(spread):
    rng = np.random.default_rng(1)
    q, k, v = (rng.normal(0, 1, (2, 3, 50, 16)).astype(np.float32) for _ in range(3))
    mask = np.triu(np.full((50, 50), -1e9, np.float32), 1)  # causal, as the text encoder's
    scale = spread / 4
    s = (q.astype(np.float64) * scale) @ k.astype(np.float64).swapaxes(-1, -2) + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ v.astype(np.float64)
    out = np.array(attention(mx.array(q), mx.array(k), mx.array(v), scale, mx.array(mask)))
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 2e-6  # float32 numpy: 6e-7 at spread 100


@pytest.mark.usefixtures("cpu_device")
@pytest.mark.parametrize("mask_shape", [None, (50, 50), (2, 1, 50, 50), (2, 5, 50, 50)])
def test_attention_split_over_two_streams_is_the_same_attention(monkeypatch, mask_shape):
    """Half the heads on a second CPU stream: the same result as one stream, bit for bit, and
    float64's; a mask with a head axis gives each half its own heads."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.normal(0, 1, (2, 5, 50, 16)).astype(np.float32) for _ in range(3))
    mask = None if mask_shape is None else rng.normal(0, 4, mask_shape).astype(np.float32)
    args = [mx.array(a) for a in (q, k, v)] + [0.5, None if mask is None else mx.array(mask)]
    whole = np.array(attention(*args))
    monkeypatch.setattr(sdpa, "SPLIT_SCORES", 1)
    calls = []
    monkeypatch.setattr(sdpa, "_heads", lambda m, a, b, heads=sdpa._heads: calls.append((a, b)) or heads(m, a, b))
    split = np.array(attention(*args))
    assert calls == [(0, 2), (2, 5)]
    assert np.array_equal(split, whole)
    s = (q.astype(np.float64) * 0.5) @ k.astype(np.float64).swapaxes(-1, -2) + (0 if mask is None else mask)
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ v.astype(np.float64)
    assert np.linalg.norm(split - ref) / np.linalg.norm(ref) < 2e-6


@pytest.mark.parametrize("fill", [-1e9, float(np.finfo(np.float32).min)])
def test_masked_attention_weights_are_exactly_zero(fill):
    """exp of a masked score is 0, not a tiny number: divided by the softmax sum that would be a
    denormal, and a matmul over denormals ran 30x slower here (the text encoder's causal mask)."""
    n = 77
    rng = np.random.default_rng(2)
    q, k = (rng.normal(0, 1, (1, 4, n, 16)).astype(np.float32) for _ in range(2))
    mask = np.triu(np.full((n, n), fill, np.float32), 1)
    identity = np.broadcast_to(np.eye(n, dtype=np.float32), (1, 4, n, n))  # the output is the weights
    weights = np.array(attention(mx.array(q), mx.array(k), mx.array(identity), 0.25, mx.array(mask)))
    assert np.all(weights[..., mask < 0] == 0)
    tiny = (weights != 0) & (np.abs(weights) < np.finfo(np.float32).tiny)
    assert not tiny.any()
    assert np.allclose(weights.sum(-1), 1, atol=1e-6)


def test_exp_underflows_to_zero_and_silu_of_large_inputs_is_exact():
    x = mx.array([-1e4, -200.0, -100.0, 89.0, 100.0, 1e4], dtype=mx.float32)
    assert np.array_equal(np.array(silu(x))[3:], np.array([89.0, 100.0, 1e4], np.float32))
    assert np.all(np.array(silu(x))[:3] <= 0) and np.all(np.isfinite(np.array(silu(x))))
