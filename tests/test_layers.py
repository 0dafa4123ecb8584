"""The CPU paths of ops.conv2d (rows of taps, few outputs, Winograd; float and quantized layers; against
mlx's own convolution), ops.upsample_conv (sub-pixel phases, against the upsampled convolution) and
layers.GroupNorm (against float64 and PyTorch, its C++ kernel and its mlx path). The C++ fused Winograd path is tested in test_kernels.py;
the paths here are what runs where it does not apply or is not built (`without_kernels`)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlx_musicviz  # noqa: F401  (BLAS and allocator set-up before mlx runs)
from mlx_musicviz.models.layers import Conv2d, LayerNorm, group_norm
from mlx_musicviz.ops import conv_path, convolution, silu


def _relative_error_against_mlx(batch, h, w, c, o, bias, path):
    """layers.Conv2d on random input, checked to take `path`, against nn.Conv2d with its weights."""
    mx.random.seed(0)
    fast = Conv2d(c, o, 3, padding=1, bias=bias)
    ref = nn.Conv2d(c, o, 3, padding=1, bias=bias)
    ref.update(fast.parameters())
    x = mx.random.normal((batch, h, w, c))
    assert conv_path(x, fast.weight, fast.stride, fast.padding, fast.dilation) == path
    got, want = np.array(fast(x)), np.array(ref(x))
    assert got.shape == want.shape == (batch, h, w, o)
    return np.linalg.norm(got - want) / np.linalg.norm(want)


@pytest.mark.usefixtures("cpu_device", "without_kernels")
@pytest.mark.parametrize("batch,h,w,c,o,bias", [(1, 40, 37, 64, 64, True), (2, 33, 50, 16, 12, True),
                                                (1, 70, 9, 128, 24, False), (3, 1, 130, 8, 9, True),
                                                (1, 21, 19, 256, 128, True)])
def test_fast_path_matches_mlx_convolution(monkeypatch, batch, h, w, c, o, bias):
    monkeypatch.setattr(convolution, "MIN_PIXELS", 1)
    monkeypatch.setattr(convolution, "MIN_CHANNELS", 1)
    monkeypatch.setattr(convolution, "STRIP_ELEMENTS", 7 * (w + 2))  # several strips, the last one short
    assert _relative_error_against_mlx(batch, h, w, c, o, bias, "rows") < 1e-6


@pytest.mark.usefixtures("cpu_device")
@pytest.mark.parametrize("batch,h,w,c,o,bias", [(1, 40, 37, 64, 3, True), (2, 9, 11, 320, 4, True),
                                                (1, 1, 5, 8, 8, False), (2, 64, 64, 128, 1, True)])
def test_few_outputs_path_matches_mlx_convolution(batch, h, w, c, o, bias):
    # 2e-6: sums of up to 9 * 320 float32 products, in another order than the reference's BLAS
    # (1.02e-6 measured on an AMD EPYC Zen 4 with Debian's OpenBLAS).
    assert _relative_error_against_mlx(batch, h, w, c, o, bias, "few_outputs") < 2e-6


@pytest.mark.usefixtures("cpu_device", "without_kernels")
@pytest.mark.parametrize("batch,h,w,c,o,bias", [(1, 8, 6, 320, 24, True), (2, 4, 10, 264, 9, False),
                                                (1, 2, 2, 300, 16, True), (3, 6, 4, 512, 40, True)])
def test_winograd_path_matches_mlx_convolution(monkeypatch, batch, h, w, c, o, bias):
    monkeypatch.setattr(convolution, "WINOGRAD_MIN_PIXELS", 1)
    assert _relative_error_against_mlx(batch, h, w, c, o, bias, "winograd") < 2e-6


@pytest.mark.usefixtures("cpu_device", "without_kernels")
def test_other_convolutions_take_mlx_path():
    def path(x, c, o, kernel=3, stride=1):
        return conv_path(x, mx.zeros((o, kernel, kernel, c)), stride, kernel // 2)

    x = mx.zeros((1, 256, 256, 64))
    assert path(x, 64, 64) == "rows"
    assert path(x, 64, 64, stride=2) == "mlx"
    assert path(x, 64, 64, kernel=1) == "mlx"
    assert path(mx.zeros((1, 256, 256, 256)), 256, 128) == "rows"  # the KL VAE's 256-channel layers
    assert path(mx.zeros((1, 64, 64, 320)), 320, 320) == "winograd"  # the UNet's wider layers
    assert path(mx.zeros((1, 32, 32, 1920)), 1920, 640) == "winograd"
    assert path(mx.zeros((1, 16, 16, 1280)), 1280, 1280) == "mlx"  # the kernel's transform would cost more
    assert path(mx.zeros((4, 16, 16, 1280)), 1280, 1280) == "winograd"  # than a batch of 1 or 2 saves
    assert path(mx.zeros((1, 33, 32, 320)), 320, 320) == "mlx"  # odd sizes
    assert path(mx.zeros((1, 64, 64, 320)), 320, 320, stride=2) == "mlx"
    assert path(mx.zeros((1, 256, 256, 512)), 512, 256) == "winograd"  # the KL VAE's 512-channel layers
    assert path(mx.zeros((1, 64, 64, 64)), 64, 64) == "mlx"
    assert path(mx.zeros((1, 512, 512, 32)), 32, 64) == "rows"
    assert path(mx.zeros((1, 128, 128, 4)), 4, 64) == "mlx"  # the decoders' conv_in at 1024x1024 frames
    assert path(mx.zeros((1, 512, 512, 16)), 16, 64) == "mlx"
    assert path(x.astype(mx.float16), 64, 64) == "mlx"
    assert path(mx.zeros((1, 64, 64, 320)), 320, 4) == "few_outputs"
    assert path(x, 64, 9) == "rows"
    assert path(x, 64, 3, stride=2) == "mlx"
    assert path(x, 64, 3, kernel=1) == "mlx"
    assert path(x.astype(mx.float16), 64, 3) == "mlx"


@pytest.mark.usefixtures("cpu_device", "without_kernels")
@pytest.mark.parametrize("c,o,size,path", [(64, 64, 130, "_rows_of_taps"), (64, 3, 40, "_few_outputs"),
                                            (320, 4, 16, "_few_outputs"), (320, 16, 32, "_winograd")])
def test_quantized_convolutions_take_the_same_paths(monkeypatch, c, o, size, path):
    from mlx_musicviz.models.quantized import QuantizedConv2d

    taken = []
    original = getattr(convolution, path)
    monkeypatch.setattr(convolution, path, lambda *args: taken.append(path) or original(*args))
    mx.random.seed(2)
    q = QuantizedConv2d.from_float(nn.Conv2d(c, o, 3, padding=1), group_size=64, bits=8)
    x = mx.random.normal((1, size, size, c))
    got = np.array(q(x))
    assert taken == [path]
    kernel = q.dequantized(mx.float32).reshape(q.kernel_shape)
    want = np.array(mx.conv2d(x, kernel, padding=1) + q.bias)
    # 2e-6: float32 sums over 9 * 320 products in another order than the reference's (1.08e-6 measured)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-6


@pytest.mark.usefixtures("cpu_device", "without_kernels")
@pytest.mark.parametrize("kind,batch,h,w,c,o,bias", [
    ("mlx", 1, 13, 17, 64, 64, True), ("ours", 2, 9, 6, 16, 24, False), ("mlx", 1, 8, 8, 64, 48, True),
    ("quantized", 2, 7, 11, 64, 32, True), ("mlx", 1, 4, 4, 32, 8, True)])
def test_upsample_conv_matches_the_upsampled_convolution(monkeypatch, kind, batch, h, w, c, o, bias):
    from mlx_musicviz.models.quantized import QuantizedConv2d

    upsampled = []
    original = convolution.upsample_nearest
    monkeypatch.setattr(convolution, "upsample_nearest", lambda *args: upsampled.append(1) or original(*args))
    mx.random.seed(3)
    conv = (Conv2d if kind == "ours" else nn.Conv2d)(c, o, 3, padding=1, bias=bias)
    if kind == "quantized":
        conv = QuantizedConv2d.from_float(conv, group_size=64, bits=8)
    x = mx.random.normal((batch, h, w, c))
    got = np.array(convolution.upsample_conv(x, conv))
    kernel = conv.kernel(mx.float32) if kind == "quantized" else conv.weight
    want = mx.conv2d(original(x, 2), kernel, padding=1)
    want = np.array(want + conv.bias if bias else want)
    assert got.shape == want.shape == (batch, 2 * h, 2 * w, o)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-6
    # sub-pixel phases where the small map has at least as many pixels as channels
    assert upsampled == ([] if batch * h * w >= c else [1])


def _kernel_calls(monkeypatch, name: str) -> list:
    """The input shapes of every call of kernels.<name> from here on (the kernels must be built)."""
    from mlx_musicviz.ops import kernels

    if not kernels.built():
        pytest.fail(kernels.unavailable_reason())
    monkeypatch.setattr(kernels, "available", kernels.built)  # also where mlx's paths would be chosen
    calls, original = [], getattr(kernels, name)
    monkeypatch.setattr(kernels, name, lambda *a, **k: calls.append(a[0].shape) or original(*a, **k))
    return calls


def _without_kernels(monkeypatch) -> list:
    """The pure-mlx paths from here on (as the `without_kernels` fixture); no kernel calls to record."""
    from mlx_musicviz.ops import kernels

    monkeypatch.setattr(kernels, "available", lambda: False)
    return []


def _group_norm_float64(x: np.ndarray, groups: int, eps: float, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    b, c = x.shape[0], x.shape[-1]
    xg = x.astype(np.float64).reshape(b, -1, groups, c // groups)
    y = (xg - xg.mean(axis=(1, 3), keepdims=True)) / np.sqrt(xg.var(axis=(1, 3), keepdims=True) + eps)
    return y.reshape(x.shape) * weight + bias


@pytest.mark.parametrize("shape,groups,offset", [
    ((1, 64, 64, 320), 32, 0.0),     # the UNet's top level: 40k elements per group
    ((2, 16, 16, 1280), 32, 5.0),    # a batch, and a mean far from zero
    ((1, 7, 5, 64), 4, 1.0),         # row count not a multiple of the block
    ((1, 256, 512, 128), 32, 3.0),   # a VAE decoder's million-element groups
    ((1, 499, 511, 32), 8, 3.0),     # large groups, row count not a multiple of the block (2.9e-5 before)
])
@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "mlx"])
@pytest.mark.usefixtures("cpu_device")
def test_group_norm_matches_float64_and_pytorch(monkeypatch, shape, groups, offset, kernel):
    """Both CPU paths: the C++ kernel (kernels.group_norm) and the pure-mlx one it replaces where built."""
    import torch

    calls = _kernel_calls(monkeypatch, "group_norm") if kernel else _without_kernels(monkeypatch)
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) * 2 + offset).astype(np.float32)
    c = shape[-1]
    weight, bias = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    norm = group_norm(groups, c, 1e-6)
    norm.update({"weight": mx.array(weight), "bias": mx.array(bias)})
    want = _group_norm_float64(x, groups, 1e-6, weight, bias)
    got = np.array(norm(mx.array(x)))
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-6
    want_silu = want / (1 + np.exp(-want))
    got_silu = np.array(norm.silu(mx.array(x)))
    assert np.linalg.norm(got_silu - want_silu) / np.linalg.norm(want_silu) < 2e-6
    unfused = np.array(silu(mx.array(got)))  # the fused pass computes the same function
    assert np.linalg.norm(got_silu - unfused) / np.linalg.norm(unfused) < 1e-6
    reference = torch.nn.GroupNorm(groups, c, eps=1e-6)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(weight))
        reference.bias.copy_(torch.from_numpy(bias))
        torch_out = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    # PyTorch's own float32 error is up to 2e-5 on the million-element groups; ours stays below 2e-6.
    assert np.linalg.norm(got - torch_out) / np.linalg.norm(torch_out) < 5e-5
    assert calls == ([shape, shape] if kernel else [])


@pytest.mark.parametrize("shape,offset", [
    ((1, 4096, 320), 0.0),   # the UNet's top level
    ((2, 77, 1024), 5.0),    # the text encoder's width, a mean far from zero
    ((3, 5, 7), 1.0),        # small and odd
])
@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "mlx"])
@pytest.mark.usefixtures("cpu_device")
def test_layer_norm_matches_float64_and_pytorch(monkeypatch, shape, offset, kernel):
    """Both CPU paths: the C++ kernel (kernels.layer_norm, rows of a multiple of 16) and the matmul one."""
    import torch

    calls = _kernel_calls(monkeypatch, "layer_norm") if kernel else _without_kernels(monkeypatch)
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 3 + offset).astype(np.float32)
    c = shape[-1]
    weight, bias = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    norm = LayerNorm(c, eps=1e-5)
    norm.update({"weight": mx.array(weight), "bias": mx.array(bias)})
    got = np.array(norm(mx.array(x)))
    xd = x.astype(np.float64)
    want = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-5) * weight + bias
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-6
    mlx_own = np.array(nn.LayerNorm.__call__(norm, mx.array(x)))  # the path a GPU takes
    assert np.linalg.norm(got - mlx_own) / np.linalg.norm(want) < 1e-6
    with torch.no_grad():
        torch_out = torch.nn.functional.layer_norm(torch.from_numpy(x), (c,), torch.from_numpy(weight),
                                                   torch.from_numpy(bias), 1e-5).numpy()
    assert np.linalg.norm(got - torch_out) / np.linalg.norm(torch_out) < 1e-6
    assert calls == ([shape] if kernel and shape[-1] % 16 == 0 else [])
