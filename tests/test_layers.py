"""The CPU convolution fast path (layers.Conv2d) against mlx's own convolution."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlx_musicviz  # noqa: F401  (BLAS and allocator set-up before mlx runs)
from mlx_musicviz.models.layers import Conv2d


@pytest.mark.parametrize("batch,h,w,c,o,bias", [(1, 40, 37, 64, 64, True), (2, 33, 50, 16, 3, True),
                                                (1, 70, 9, 128, 24, False), (3, 1, 130, 8, 8, True)])
def test_fast_path_matches_mlx_convolution(monkeypatch, batch, h, w, c, o, bias):
    monkeypatch.setattr(Conv2d, "MIN_PIXELS", 1)
    monkeypatch.setattr(Conv2d, "STRIP_ELEMENTS", 7 * (w + 2))  # several strips, the last one short
    mx.random.seed(0)
    fast = Conv2d(c, o, 3, padding=1, bias=bias)
    ref = nn.Conv2d(c, o, 3, padding=1, bias=bias)
    ref.update(fast.parameters())
    x = mx.random.normal((batch, h, w, c))
    assert fast._fast_path(x)
    got, want = np.array(fast(x)), np.array(ref(x))
    assert got.shape == want.shape == (batch, h, w, o)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-6


def test_other_convolutions_take_mlx_path():
    x = mx.zeros((1, 256, 256, 64))
    assert Conv2d(64, 64, 3, padding=1)._fast_path(x)
    assert not Conv2d(64, 64, 3, padding=1, stride=2)._fast_path(x)
    assert not Conv2d(64, 64, 1)._fast_path(x)
    assert not Conv2d(320, 320, 3, padding=1)._fast_path(mx.zeros((1, 256, 256, 320)))
    assert not Conv2d(64, 64, 3, padding=1)._fast_path(mx.zeros((1, 64, 64, 64)))
    assert not Conv2d(64, 64, 3, padding=1)._fast_path(x.astype(mx.float16))
