"""The C++ kernels (mlx_musicviz.ops.kernels; GroupNorm's against float64 and PyTorch in test_layers.py). The fused Winograd convolution: built where CI runs, against mlx's and
PyTorch's convolutions on every case its blocking has (tile and channel tails, several output chunks,
batches, the upsampled input, the epilogue), taken by the layers that should take it, and the fallback
when it cannot be built."""

import os
import subprocess
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlx_musicviz  # noqa: F401  (BLAS and allocator set-up before mlx runs)
from mlx_musicviz import ops
from mlx_musicviz.models import layers
from mlx_musicviz.ops import kernels

pytestmark = pytest.mark.usefixtures("cpu_device", "kernels_used")


def test_the_kernels_are_built_on_linux():
    if not sys.platform.startswith("linux"):
        pytest.skip("the C++ kernels are built on Linux only")
    # CI installs the compiler and nanobind: a fallback here would hide a broken build behind slower paths
    assert kernels.built(), kernels.unavailable_reason()


def _relative(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _reference(x, weight, bias, residual, relu, upsample):
    """The same function from mlx's own convolution."""
    source = ops.upsample_nearest(x, 2) if upsample else x
    y = mx.conv2d(source, weight, padding=1)
    y = y if bias is None else y + bias
    y = y if residual is None else y + residual
    return nn.relu(y) if relu else y


@pytest.mark.parametrize("shape,o,bias,residual,relu,upsample", [
    ((1, 8, 8, 64), 64, True, False, False, False),      # 16 tiles: one short block, a 4-tile micro-kernel tail
    ((2, 14, 10, 16), 128, False, True, True, False),    # a batch, two output chunks, blocks across images
    ((1, 30, 34, 320), 320, True, True, False, False),   # 255 tiles, channel chunks 128 + 128 + 64
    ((3, 5, 7, 48), 64, True, False, True, True),        # upsampled: 10 x 14 outputs from 5 x 7
    ((1, 64, 64, 64), 64, True, True, True, False),      # the tiny VAE's block convolution
    ((1, 16, 24, 384), 192, False, False, False, True),  # three chunks each way
])
def test_conv3x3_matches_mlx_and_pytorch(shape, o, bias, residual, relu, upsample):
    import torch

    if not kernels.available():
        pytest.fail(kernels.unavailable_reason())
    key = mx.random.key(sum(shape) + o)
    k1, k2, k3, k4 = mx.random.split(key, 4)
    x = mx.random.normal(shape, key=k1)
    weight = mx.random.normal((o, 3, 3, shape[3]), key=k2) / (3 * shape[3] ** 0.5)
    b = mx.random.normal((o,), key=k3) if bias else None
    out_shape = (shape[0], shape[1] * (1 + upsample), shape[2] * (1 + upsample), o)
    r = mx.random.normal(out_shape, key=k4) if residual else None
    got = kernels.conv3x3(x, weight, b, r, relu=relu, upsample=upsample)
    assert got.shape == out_shape and got.dtype == mx.float32
    assert _relative(got, _reference(x, weight, b, r, relu, upsample)) < 2e-6

    with torch.no_grad():
        tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)
        if upsample:
            tx = torch.nn.functional.interpolate(tx, scale_factor=2, mode="nearest")
        tw = torch.from_numpy(np.array(weight)).permute(0, 3, 1, 2)
        ty = torch.nn.functional.conv2d(tx, tw, None if b is None else torch.from_numpy(np.array(b)), padding=1)
        ty = ty.permute(0, 2, 3, 1)
        ty = ty if r is None else ty + torch.from_numpy(np.array(r))
        ty = torch.relu(ty) if relu else ty
    assert _relative(got, ty.numpy()) < 2e-6


def test_conv3x3_reads_views_and_repeats_itself_exactly():
    if not kernels.available():
        pytest.fail(kernels.unavailable_reason())
    x = mx.random.normal((1, 32, 20, 64), key=mx.random.key(1)).transpose(0, 2, 1, 3)  # not row-contiguous
    weight = mx.random.normal((64, 3, 3, 64), key=mx.random.key(2)) / 24
    got = kernels.conv3x3(x, weight)
    assert _relative(got, mx.conv2d(x, weight, padding=1)) < 2e-6
    # each output is computed by one thread, in one order: the same bits every time
    assert mx.array_equal(got, kernels.conv3x3(x, weight)).item()


@pytest.mark.parametrize("shape,weight,message", [
    ((1, 7, 8, 64), (64, 3, 3, 64), "even output sides"),
    ((1, 8, 8, 24), (64, 3, 3, 24), "even output sides"),
    ((1, 8, 8, 64), (48, 3, 3, 64), "even output sides"),
    ((1, 8, 8, 64), (64, 1, 1, 64), "weight (O, 3, 3, C)"),
])
def test_conv3x3_refuses_what_it_does_not_compute(shape, weight, message):
    if not kernels.available():
        pytest.fail(kernels.unavailable_reason())
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kernels.conv3x3(mx.zeros(shape), mx.zeros(weight))
    with pytest.raises(ValueError, match="float32"):
        kernels.conv3x3(mx.zeros((1, 8, 8, 64), mx.float16), mx.zeros((64, 3, 3, 64), mx.float16))


def test_layers_take_the_fused_path_where_it_pays():
    if not kernels.available():
        pytest.fail(kernels.unavailable_reason())

    def path(shape, o, kernel=3, stride=1, dtype=mx.float32):
        return ops.conv_path(mx.zeros(shape, dtype), mx.zeros((o, kernel, kernel, shape[3])), stride, kernel // 2)

    assert path((1, 512, 512, 64), 64) == "fused_winograd"  # the tiny VAE's
    assert path((1, 64, 64, 64), 64) == "fused_winograd"
    assert path((1, 512, 512, 128), 128) == "fused_winograd"  # the KL VAE's 128- and 256-channel levels
    assert path((1, 256, 256, 512), 256) == "fused_winograd"
    assert path((1, 64, 64, 960), 320) == "fused_winograd"  # the UNet's 64x64 level
    assert path((1, 128, 128, 512), 512) == "winograd"  # wider outputs: mlx's paths
    assert path((1, 32, 32, 640), 640) == "winograd"
    assert path((1, 16, 16, 1280), 1280) == "mlx"
    assert path((1, 512, 512, 64), 3) == "few_outputs"
    assert path((1, 64, 64, 4), 64) == "mlx"  # 4 channels: not a multiple of 16
    assert path((1, 129, 128, 64), 64) == "rows"  # an odd side
    assert path((1, 64, 64, 64), 64, stride=2) == "mlx"
    assert path((1, 64, 64, 64), 64, kernel=1) == "mlx"
    assert path((1, 64, 64, 64), 64, dtype=mx.float16) == "mlx"
    half_kernel = mx.zeros((64, 3, 3, 64), mx.float16)  # float32 input, a half-precision kernel: not fused
    assert ops.conv_path(mx.zeros((1, 64, 64, 64)), half_kernel, 1, 1) != "fused_winograd"


@pytest.mark.parametrize("quantized", [False, True])
def test_fused_layers_match_the_unfused_ones(monkeypatch, quantized):
    """Conv2d with its epilogue (the tiny VAE's ReLUs and residual) and upsample_conv, fused against the
    pure-mlx paths, float and quantized."""
    from mlx_musicviz.models.quantized import QuantizedConv2d

    if not kernels.available():
        pytest.fail(kernels.unavailable_reason())
    mx.random.seed(7)
    conv = layers.Conv2d(64, 64, 3, padding=1)
    if quantized:
        conv = QuantizedConv2d.from_float(conv, group_size=64, bits=8)
    x = mx.random.normal((2, 24, 16, 64))
    residual = mx.random.normal((2, 24, 16, 64))
    fused = [conv(x, residual=residual, relu=True), conv(x, relu=True), ops.upsample_conv(x, conv)]
    assert ops.conv_path(x, conv.kernel(mx.float32) if quantized else conv.weight, 1, 1) == "fused_winograd"
    monkeypatch.setattr(kernels, "available", lambda: False)
    monkeypatch.setattr(ops.convolution, "MIN_PIXELS", 1)  # the rows of taps, as at the tiny VAE's sizes
    assert ops.conv_path(x, conv.kernel(mx.float32) if quantized else conv.weight, 1, 1) == "rows"
    plain = [conv(x, residual=residual, relu=True), conv(x, relu=True), ops.upsample_conv(x, conv)]
    for a, b in zip(fused, plain):
        assert a.shape == b.shape
        assert _relative(a, b) < 2e-6


@pytest.mark.parametrize("batch,n,m,heads,d", [
    (1, 50, 64, 2, 64),      # one short query block, a 2-row micro-kernel tail
    (2, 130, 192, 3, 64),    # a batch, blocks of 48 rows across heads, three key panels
    (1, 97, 128, 2, 128),    # heads of two 64-column output panels
    (1, 1024, 1024, 10, 64), # the sdxs-512 UNet's self-attention at 32 x 32 latents
    (2, 4096, 77, 5, 64),    # its cross-attention on the 77 text tokens at 64 x 64: a padded key panel
    (1, 20, 3, 1, 64),       # fewer keys than one vector
])
def test_attention_matches_mlx_and_pytorch(batch, n, m, heads, d):
    import torch

    if not kernels.available():
        pytest.fail(kernels.unavailable_reason())
    k1, k2, k3 = mx.random.split(mx.random.key(n + m + d), 3)
    # scores of standard deviation ~3 after scaling: a peaked softmax, as trained attentions have
    q = 3 * mx.random.normal((batch, n, heads * d), key=k1)
    k = mx.random.normal((batch, m, heads * d), key=k2)
    v = mx.random.normal((batch, m, heads * d), key=k3)
    scale = d**-0.5
    got = kernels.attention(q, k, v, heads, scale)
    assert got.shape == q.shape and got.dtype == mx.float32
    split = [t.reshape(batch, -1, heads, d).transpose(0, 2, 1, 3) for t in (q, k, v)]
    want = mx.softmax((split[0] @ split[1].swapaxes(-1, -2)) * scale, axis=-1, precise=True) @ split[2]
    assert _relative(got, want.transpose(0, 2, 1, 3).reshape(q.shape)) < 2e-6
    with torch.no_grad():
        tq, tk, tv = (torch.from_numpy(np.array(t)) for t in split)
        ty = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, scale=scale)
    assert _relative(got, ty.permute(0, 2, 1, 3).reshape(q.shape).numpy()) < 2e-6
    # views are made contiguous first, and each output row is computed by one thread in one order
    assert mx.array_equal(kernels.attention(q[:, :, :], k.T.T, v, heads, scale), got).item()


@pytest.mark.parametrize("q,k,heads,message", [
    ((1, 8, 96), (1, 64, 96), 3, "multiple of 64"),      # heads of 32 channels
    ((1, 8, 128), (1, 64, 64), 2, "q (B, N, H * d)"),
])
def test_attention_refuses_what_it_does_not_compute(q, k, heads, message):
    if not kernels.available():
        pytest.fail(kernels.unavailable_reason())
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        kernels.attention(mx.zeros(q), mx.zeros(k), mx.zeros(k), heads, 0.1)
    assert not kernels.attention_supports(k[1], q[2] // heads) or message.startswith("q")


def test_multi_head_attention_takes_the_kernel_where_it_applies(monkeypatch):

    if not kernels.available():
        pytest.fail(kernels.unavailable_reason())
    calls = []
    original = kernels.attention
    monkeypatch.setattr(kernels, "attention", lambda *args: calls.append(args[1].shape) or original(*args))
    x, text = mx.random.normal((2, 256, 128), key=mx.random.key(3)), mx.random.normal((2, 77, 128), key=mx.random.key(4))
    fused = ops.multi_head_attention(x, x, x, 2, 0.125)
    cross = ops.multi_head_attention(x, text, text, 2, 0.125)  # 77 keys (text): the kernel too
    causal = mx.triu(mx.full((256, 256), -mx.inf), k=1)
    ops.multi_head_attention(x, x, x, 2, 0.125, causal)  # a mask: the mlx path
    wide = mx.random.normal((1, 64, 96), key=mx.random.key(5))
    ops.multi_head_attention(wide, wide, wide, 3, 0.125)  # heads of 32 channels: the mlx path
    assert calls == [(2, 256, 128), (2, 77, 128)]
    monkeypatch.setattr(kernels, "available", lambda: False)
    assert _relative(fused, ops.multi_head_attention(x, x, x, 2, 0.125)) < 2e-6
    assert _relative(cross, ops.multi_head_attention(x, text, text, 2, 0.125)) < 2e-6


def test_group_norm_without_affine_on_views_and_its_refusals():
    """The kernel without weight or bias, on a view, bit-stable; channel counts it does not take are
    refused, and layers.GroupNorm sends them to its mlx path."""
    if not kernels.available():
        pytest.fail(kernels.unavailable_reason())
    x = 4 + 2 * mx.random.normal((2, 9, 13, 64), key=mx.random.key(7))
    groups = np.array(x, np.float64).reshape(2, -1, 8, 8)
    want = ((groups - groups.mean(axis=(1, 3), keepdims=True)) / np.sqrt(groups.var(axis=(1, 3), keepdims=True) + 1e-5))
    got = kernels.group_norm(x, 8, 1e-5)
    assert _relative(got, want.reshape(x.shape)) < 1e-6
    assert mx.array_equal(kernels.group_norm(x.T.T, 8, 1e-5), got).item()
    silu = kernels.group_norm(x, 8, 1e-5, silu=True)
    assert _relative(silu, got * mx.sigmoid(got)) < 1e-6
    for channels, count in ((24, 4), (64, 6)):  # not a multiple of 16; groups that do not divide
        assert not kernels.group_norm_supports(channels, count)
        with pytest.raises(ValueError, match="multiple of 16 and of the group count"):
            kernels.group_norm(mx.zeros((1, 4, channels)), count, 1e-5)
    norm = layers.GroupNorm(4, 24, pytorch_compatible=True)
    y = mx.random.normal((1, 5, 5, 24), key=mx.random.key(8))
    want = np.array(nn.GroupNorm(4, 24, pytorch_compatible=True)(y))
    assert _relative(norm(y), want) < 1e-6


def test_layer_norm_without_affine_and_its_refusals():
    """kernels.layer_norm without weight or bias (the affine path is in test_layers.py), on a view;
    24 channels are refused, and layers.LayerNorm keeps its matmul path for them."""
    if not kernels.available():
        pytest.fail(kernels.unavailable_reason())
    x = 7 + 3 * mx.random.normal((3, 17, 48), key=mx.random.key(11))
    xd = np.array(x, np.float64)
    want = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-5)
    got = kernels.layer_norm(x, 1e-5)
    assert _relative(got, want) < 1e-6
    assert mx.array_equal(kernels.layer_norm(x.T.T, 1e-5), got).item()
    assert not kernels.layer_norm_supports(24)
    with pytest.raises(ValueError, match="multiple of 16"):
        kernels.layer_norm(mx.zeros((2, 24)), 1e-5)
    norm = layers.LayerNorm(24)
    y = mx.random.normal((2, 5, 24), key=mx.random.key(12))
    assert _relative(norm(y), nn.LayerNorm(24)(y)) < 1e-6


@pytest.mark.parametrize("shape", [(1, 4096, 2560), (2, 7, 64), (5, 32)])
def test_geglu_matches_mlx_and_pytorch(shape):
    """kernels.geglu against h * gelu(gate) in float64, mlx's and PyTorch's exact GELU; the models' GEGLU
    takes it, and widths it does not take go to the mlx path."""
    import torch


    if not kernels.available():
        pytest.fail(kernels.unavailable_reason())
    x = 3 * mx.random.normal(shape, key=mx.random.key(shape[-1]))  # gates out to +-12: the clamped erf too
    got = kernels.geglu(x)
    assert got.shape == (*shape[:-1], shape[-1] // 2) and got.dtype == mx.float32
    xd = np.array(x, np.float64)
    h, gate = np.split(xd, 2, axis=-1)
    from math import erf
    want = h * 0.5 * gate * (1 + np.vectorize(erf)(gate / np.sqrt(2)))
    assert _relative(got, want) < 1e-6
    th, tgate = torch.from_numpy(np.array(x)).chunk(2, dim=-1)
    assert _relative(got, (th * torch.nn.functional.gelu(tgate)).numpy()) < 1e-6
    assert mx.array_equal(ops.geglu(x), got).item()
    assert mx.array_equal(kernels.geglu(x[..., :].T.T), got).item()


def test_geglu_refuses_what_it_does_not_compute(monkeypatch):

    if not kernels.available():
        pytest.fail(kernels.unavailable_reason())
    for width in (48, 33):  # D = 24 (not a multiple of 16); an odd width
        assert not kernels.geglu_supports(width)
        with pytest.raises(ValueError, match="2 \\* D with D a multiple of 16"):
            kernels.geglu(mx.zeros((2, width)))
    x = mx.random.normal((3, 48), key=mx.random.key(9))
    h, gate = mx.split(x, 2, axis=-1)
    assert _relative(ops.geglu(x), h * nn.gelu(gate)) < 1e-6  # the mlx path
    calls = []
    original = kernels.geglu
    monkeypatch.setattr(kernels, "geglu", lambda y: calls.append(y.shape) or original(y))
    from mlx_musicviz.models.unet import GEGLU

    layer = GEGLU(32, 64)
    y = mx.random.normal((1, 10, 32), key=mx.random.key(10))
    fused = layer(y)
    assert calls == [(1, 10, 128)]
    monkeypatch.setattr(kernels, "available", lambda: False)
    assert _relative(fused, layer(y)) < 1e-6


def _kernels_in_a_fresh_process(tmp_path, **env) -> str:
    code = ("import mlx_musicviz, mlx.core as mx\n"
            "from mlx_musicviz.ops import kernels\n"
            "from mlx_musicviz import ops\n"
            "print(kernels.available(), '|', kernels.unavailable_reason(), '|',"
            " ops.conv_path(mx.zeros((1, 256, 256, 64)), mx.zeros((64, 3, 3, 64)), 1, 1))\n")
    environment = {**os.environ, "MLX_MUSICVIZ_CACHE": str(tmp_path / "cache"), **env}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_without_a_compiler_the_models_keep_mlx_paths(tmp_path):
    fake = tmp_path / "c++"
    fake.write_text("#!/bin/sh\necho 'c++: error: no such compiler' >&2\nexit 1\n")
    fake.chmod(0o755)
    out = _kernels_in_a_fresh_process(tmp_path, CXX=str(fake))
    if not sys.platform.startswith("linux"):
        assert out.startswith("False")
        return
    assert out == "False | the C++ build failed (%s): c++: error: no such compiler | rows" % fake
    assert not list((tmp_path / "cache").rglob("*.so"))  # nothing half-built left where a later run would load it


def test_the_switch_turns_them_off(tmp_path):
    out = _kernels_in_a_fresh_process(tmp_path, MLX_MUSICVIZ_KERNELS="0")
    assert out.startswith("False |") and out.endswith("| rows")
    if sys.platform.startswith("linux"):
        assert "MLX_MUSICVIZ_KERNELS=0" in out


def test_the_models_take_the_kernels_only_where_they_are_faster(monkeypatch):
    """Without AVX-512 (the kernels' 16-float register blocks spill on AVX2) the models keep mlx's own
    paths unless MLX_MUSICVIZ_KERNELS=1 asks for the kernels; with it, they take them."""
    here = kernels.slower_here()
    monkeypatch.setattr(kernels.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(kernels, "_cpu_features", lambda: "flags\t\t: fpu sse2 avx avx2 fma")
    assert "no AVX-512" in kernels.slower_here()
    monkeypatch.setattr(kernels, "_cpu_features", lambda: "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw")
    assert kernels.slower_here() is None
    if not sys.platform.startswith("linux"):
        return
    code = ("import mlx_musicviz, mlx.core as mx\n"
            "from mlx_musicviz.ops import kernels\n"
            "from mlx_musicviz import ops\n"
            "print(kernels.available(), '|', kernels.unavailable_reason(), '|',"
            " ops.conv_path(mx.zeros((1, 256, 256, 64)), mx.zeros((64, 3, 3, 64)), 1, 1))\n")
    for switch in ("", "1"):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "MLX_MUSICVIZ_KERNELS": switch})
        assert done.returncode == 0, done.stderr
        expected = f"False | {here} | rows" if switch == "" and here else "True | None | fused_winograd"
        assert done.stdout.strip() == expected
