"""2-D convolution of NHWC maps (mx.conv2d's layout: weights (O, kh, kw, C)), with CPU paths for the
3x3 convolutions that are most of a UNet's and a VAE's time, and the upsampling convolution."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from . import kernels
from .device import on_cpu


def upsample_nearest(x: mx.array, factor: int = 2) -> mx.array:
    """Nearest-neighbour upsampling of an NHWC tensor by an integer factor."""
    b, h, w, c = x.shape
    x = mx.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
    return x.reshape(b, h * factor, w * factor, c)


# The CPU paths of `conv2d` (3x3, stride 1, padding 1, float32); tests change these.
FUSED_MAX_OUTPUTS = 320  # the C++ fused Winograd (`kernels.conv3x3`) up to this many outputs: each block of
#                          48 tiles streams the whole transformed kernel (16 * C * O floats), so wide layers
#                          on small maps lose to BLAS. Measured against the paths below (2-core x86-64, batch 1):
#                          64->64 at 64^2-512^2 0.35-0.64x their time, 128 and 256 channels at 256^2-512^2
#                          0.37-0.45x, the UNet's 64^2 layers (320 outputs) 0.69-0.82x; 512->512 at 128^2 0.97x,
#                          640->640 at 32^2 1.25x, 1280->1280 at 16^2 1.46x
MIN_PIXELS = 128 * 128  # rows of taps from this map size: below it mlx's own path is as fast
MIN_CHANNELS = 32  # rows of taps from this many input channels: narrower ones (the decoders' 4-channel
#                    conv_in) have a small im2col, and mlx's path is 2-2.5x faster
MAX_CHANNELS = 256  # rows of taps up to this many input channels: wider layers (the UNet's, the KL
#                     VAE's 512) run as fast in mlx's own path
STRIP_ELEMENTS = 1 << 14  # output rows per strip x (W + 2): ~4 MB accumulators at 64 channels
FEW_OUTPUTS = 8  # at most this many output channels: the one-matmul path
WINOGRAD_MIN_PIXELS = 32 * 32  # Winograd for wider layers from this many pixels (N * H * W): the kernel's
#                                transform costs ~2 ns a weight on each call whatever the map, the matmuls
#                                save 20 of 36 products per 2x2 tile, so on small maps (the UNet's 16x16
#                                at batch 1 and 2) it loses


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _same_3x3_on_cpu(x: mx.array, weight: mx.array, stride, padding, dilation) -> bool:
    """Whether a convolution is 3x3, stride 1, padding 1, undilated, on float32 CPU input: the CPU paths' case."""
    return (tuple(weight.shape[1:3]) == (3, 3) and _pair(stride) == (1, 1) and _pair(padding) == (1, 1)
            and _pair(dilation) == (1, 1) and on_cpu(x))


def _fused(x: mx.array, weight: mx.array, h: int, w: int) -> bool:
    """Whether a 3x3 CPU convolution of x with weight (O, 3, 3, C) to an h x w map takes the C++ fused
    Winograd (float32 only)."""
    o, c = weight.shape[0], weight.shape[-1]
    return (x.dtype == mx.float32 and weight.dtype == mx.float32 and o <= FUSED_MAX_OUTPUTS
            and kernels.supports(h, w, c, o) and kernels.available())


def conv_path(x: mx.array, weight: mx.array, stride=1, padding=0, dilation=1) -> str:
    """How `conv2d` computes x (N, H, W, C) with weight (O, kh, kw, C): "fused_winograd", "few_outputs",
    "rows", "winograd" or "mlx"."""
    o, _, _, c = weight.shape
    n, h, w, _ = x.shape
    if not _same_3x3_on_cpu(x, weight, stride, padding, dilation):
        return "mlx"
    if _fused(x, weight, h, w):
        return "fused_winograd"
    if o <= FEW_OUTPUTS:
        return "few_outputs"
    if MIN_CHANNELS <= c <= MAX_CHANNELS and h * w >= MIN_PIXELS:
        return "rows"
    if c > MAX_CHANNELS and h % 2 == 0 and w % 2 == 0 and n * h * w >= WINOGRAD_MIN_PIXELS:
        return "winograd"
    return "mlx"


def conv2d(x: mx.array, weight: mx.array, bias: mx.array | None = None, stride=1, padding=0,
           dilation=1, *, residual: mx.array | None = None, relu: bool = False) -> mx.array:
    """mx.conv2d (+ bias) [+ residual] [then ReLU], with four CPU paths for 3x3, stride-1, padding-1
    float32 kernels.

    Fused Winograd (up to FUSED_MAX_OUTPUTS outputs, even maps, channels multiples of 16/64, when the
    C++ kernels are built: `mlx_musicviz.ops.kernels`): one pass over the map, bias, residual and ReLU in
    its epilogue. The three below are what runs where it does not apply or is not built.

    Rows of taps (large maps of 32 to 256 channels: the tiny VAE's, the KL VAE's two last levels):
    mlx's CPU convolution copies 9 shifted views into one im2col buffer; over a 512x512 map of 64
    channels (600 MB of copies) that costs more than the matmul. Here the output is computed in the
    padded map's row layout (`_row_layout`), where every tap (dy, dx) is a contiguous row offset: 9
    accumulating matmuls over views, no input copies. Strips of output rows keep the accumulator in
    cache. Measured on a 2-core x86-64: 64 channels 1.3-1.6x faster than mlx at 512x512, ~2x at
    256x256; the KL VAE's 256->128 at 512x512 3.3-3.9 -> 1.6-1.7 s, 256->256 at 256x256 0.49-0.83 ->
    0.43-0.47 s, 128->128 at 512x512 0.93-1.09 -> 0.90-1.03 s (its 512-channel layers: no gain).
    Below 32 channels the 9 thin matmuls lose: 4->64 at 128x128 (the tiny VAE's conv_in for 1024x1024
    frames) 3.8-4.3 ms against mlx's 1.6, 16->64 at 512x512 204 against 90 ms; at 32, even or better.

    Few outputs (the decoders' image convolutions, the UNet's conv_out): BLAS runs an N = 3 or 4
    matmul at ~10 GFLOP/s here, so all 9 taps' outputs come from one (pixels, C) @ (C, 9 * O)
    matmul over the padded map, and the output is the sum of 9 shifted views of it. Measured here
    (interleaved runs): 64->3 at 512x512 113 -> 80 ms, 128->3 (KL VAE) ~500 -> ~140 ms, 320->4 at
    64x64 20 -> 4.5 ms.

    Winograd (wider layers, more than 256 channels: the UNet's, the KL VAE's 512, on maps of at least
    WINOGRAD_MIN_PIXELS): see `_winograd`.
    """
    path = conv_path(x, weight, stride, padding, dilation)
    if path == "fused_winograd":
        return _fused_conv3x3(x, weight, bias, residual, relu)
    if path == "few_outputs":
        y = _few_outputs(x, weight, bias)
    elif path == "rows":
        y = _rows_of_taps(x, weight, bias)
    elif path == "winograd":
        y = _winograd(x, weight, bias)
    else:
        y = mx.conv2d(x, weight, stride=stride, padding=padding, dilation=dilation)
        y = y if bias is None else y + bias
    return _epilogue(y, residual, relu)


def _fused_conv3x3(x: mx.array, weight: mx.array, bias: mx.array | None, residual: mx.array | None = None,
                   relu: bool = False, upsample: bool = False) -> mx.array:
    """The C++ fused Winograd (`kernels.conv3x3`), where `_fused` says it applies."""
    # the kernel is float32 throughout: a bias or residual kept in half precision is cast
    bias = None if bias is None else bias.astype(mx.float32)
    residual = None if residual is None else residual.astype(mx.float32)
    return kernels.conv3x3(x, weight, bias, residual, relu, upsample=upsample)


def _epilogue(y: mx.array, residual: mx.array | None, relu: bool) -> mx.array:
    """What the fused path does after its convolution: + residual, then ReLU."""
    y = y if residual is None else y + residual
    return nn.relu(y) if relu else y


def _rows_of_taps(x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    o, _, _, c = weight.shape
    b, h, w, _ = x.shape
    flat, wp = _row_layout(x)
    taps = weight.transpose(1, 2, 3, 0).reshape(9, c, o)
    bias = bias if bias is not None else mx.zeros((o,), x.dtype)
    rows = max(1, STRIP_ELEMENTS // wp)
    strips = []
    for i in range(b):
        for top in range(0, h, rows):
            n = min(rows, h - top)
            y = mx.broadcast_to(bias, (n * wp, o))
            for t in range(9):
                start = (top + t // 3) * wp + t % 3
                y = mx.addmm(y, flat[i, start:start + n * wp], taps[t])
            strips.append(y.reshape(n, wp, o)[:, :w])
    return mx.concatenate(strips).reshape(b, h, w, o)


def _few_outputs(x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    o, _, _, c = weight.shape
    b, h, w, _ = x.shape
    flat, wp = _row_layout(x)
    taps = weight.transpose(3, 1, 2, 0).reshape(c, 9 * o)  # column t * o + j: tap t, output j
    every_tap = flat @ taps
    y = bias
    for t in range(9):
        start = (t // 3) * wp + t % 3  # tap (dy, dx) is a row offset in the padded map's layout
        view = every_tap[:, start:start + h * wp, t * o:(t + 1) * o]
        y = view if y is None else y + view
    return y.reshape(b, h, wp, o)[:, :, :w]


# Winograd F(2x2, 3x3): each 2x2 output tile from a 4x4 input tile d as A^T [(G g G^T) * (B^T d B)] A,
# 16 products where the direct convolution takes 36. Over channels the 16 elementwise products are
# 16 matmuls (tiles, C) @ (C, O). B^T, G and A^T are applied one axis at a time by these:
def _winograd_input_1d(d0, d1, d2, d3):  # B^T: rows (1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _winograd_kernel_1d(g0, g1, g2):  # G: rows (1, 0, 0), (1, 1, 1) / 2, (1, -1, 1) / 2, (0, 0, 1)
    half_sum = 0.5 * (g0 + g2)
    return g0, half_sum + 0.5 * g1, half_sum - 0.5 * g1, g2


def _winograd_output_1d(m0, m1, m2, m3):  # A^T: rows (1, 1, 1, 0), (0, 1, -1, -1)
    return m0 + m1 + m2, m1 - m2 - m3


@mx.compile
def _winograd_kernel(weight: mx.array) -> list[mx.array]:
    """(O, 3, 3, C) -> the 16 transformed kernels G g G^T, each (O, C), in order (a, b)."""
    rows = [_winograd_kernel_1d(weight[:, i, 0], weight[:, i, 1], weight[:, i, 2]) for i in range(3)]
    columns = [_winograd_kernel_1d(rows[0][b], rows[1][b], rows[2][b]) for b in range(4)]  # [b][a]
    return [columns[b][a] for a in range(4) for b in range(4)]


_winograd_input = mx.compile(_winograd_input_1d)  # one fused kernel for the four outputs


@mx.compile
def _winograd_outputs(*products: mx.array) -> list[mx.array]:
    """The 16 products M_ab (in order (a, b)) and the bias -> the tile's 4 outputs y_pq, order (p, q)."""
    *m, bias = products
    by_column = [_winograd_output_1d(*(m[4 * a + b] for a in range(4))) for b in range(4)]  # [b][p]
    return [y + bias for p in range(2) for y in _winograd_output_1d(*(by_column[b][p] for b in range(4)))]


def _winograd(x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    """3x3 convolution, stride 1, padding 1, of an even-sized map by Winograd F(2x2, 3x3).

    The input transform runs along the padded map's columns (views of every other column) and then
    its rows, each a fused elementwise kernel; the 16 matmuls are (N * H * W / 4, C) @ (C, O); the
    output transform is one fused kernel, and the four output phases are interleaved by two stacks.
    The kernel's transform is computed on each call (no second copy of the weights is kept; quantized
    layers unpack first). Measured on a 2-core x86-64 against mlx's convolution: the UNet's layers at
    batch 1 0.6-0.93x the time, 0.73x over the twelve (64x64 320->320 51 -> 38 ms, 32x32 1920->640
    138 -> 102 ms, of which the kernel's transform 18), relative difference ~5e-7.
    """
    n, h, w, c = x.shape
    o = weight.shape[0]
    tiles = n * (h // 2) * (w // 2)
    padded = mx.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    columns = _winograd_input(*(padded[:, :, j:j + w:2] for j in range(4)))  # [b]: (N, H + 2, W / 2, C)
    tile_inputs = [_winograd_input(*(z[:, i:i + h:2] for i in range(4))) for z in columns]  # [b][a]
    kernels = _winograd_kernel(weight)
    products = [tile_inputs[b][a].reshape(tiles, c) @ kernels[4 * a + b].T for a in range(4) for b in range(4)]
    outputs = _winograd_outputs(*products, bias if bias is not None else mx.zeros((o,), x.dtype))
    outputs = [y.reshape(n, h // 2, w // 2, o) for y in outputs]
    rows = [mx.stack(outputs[2 * p:2 * p + 2], axis=3) for p in range(2)]  # (N, H / 2, W / 2, 2, O)
    return mx.stack(rows, axis=2).reshape(n, h, w, o)  # (N, H / 2, 2, W / 2, 2, O)


def _row_layout(x: mx.array) -> tuple[mx.array, int]:
    """(N, H, W, C) -> its zero-padded map flattened to (N, (H + 3) * (W + 2), C), and W + 2.

    In this layout tap (dy, dx) of a 3x3 convolution is the row offset dy * (W + 2) + dx; the one
    extra bottom row keeps the last tap's view of the last output row inside the buffer.
    """
    b, _, w, c = x.shape
    return mx.pad(x, [(0, 0), (1, 2), (1, 1), (0, 0)]).reshape(b, -1, c), w + 2


# Each output pixel (2i + a, 2j + b) of nearest x2 upsampling then a 3x3 convolution (padding 1) sees
# small-map rows i - 1 + a .. i + a, through the 3x3 kernel's rows summed onto them: phase a = 0 takes
# [row 0, row 1 + row 2], phase a = 1 [row 0 + row 1, row 2]; columns alike. Rows of this (16, 9) matrix:
# (a, b, ry, rx), the 2x2 kernel tap (ry, rx) of phase (a, b); columns: the 3x3 taps (ky, kx).
_PHASES_1D = mx.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], dtype=mx.float32)  # (phase, r, k)
_SUBPIXEL_FOLD = (_PHASES_1D[:, None, :, None, :, None] * _PHASES_1D[None, :, None, :, None, :]).reshape(16, 9)


def upsample_conv(x: mx.array, conv: nn.Module) -> mx.array:
    """`conv(upsample_nearest(x, 2))`, for a 3x3, stride-1, padding-1 convolution `conv`.

    On the CPU, where the small map has at least as many pixels as channels, it is computed as four
    2x2 convolutions on the small map, one per output phase (sub-pixel), interleaved: 16 taps per
    small-map pixel instead of 36, and no upsampled map. Where the C++ fused Winograd applies (`conv2d`),
    it reads the small map through the upsampling instead. Each phase is 4 accumulating matmuls over
    views of the padded map's row layout (`_row_layout`). Measured on a 2-core x86-64 against the
    upsampled convolution: 64 channels 64->128 24 -> 13 ms, 128->256 89 -> 44, 256->512 370 -> 213
    (the tiny VAE's); 640 channels 32->64 248 -> 188 ms at batch 1, 515 -> 353 at batch 2 (the UNet's
    last upsampler). With fewer pixels than channels (the UNet's 1280 channels at 16x16) the 16
    weight matrices cost more than the taps save (226 -> 367 ms), so the upsampled map is used.
    `conv` is an nn.Conv2d or a quantized one (its kernel is unpacked first).
    """
    kernel = conv.kernel(x.dtype) if hasattr(conv, "kernel") else conv.weight
    b, h, w, c = x.shape
    o = kernel.shape[0]
    bias = conv.get("bias")
    on_this_path = (_same_3x3_on_cpu(x, kernel, conv.stride, conv.padding, getattr(conv, "dilation", 1))
                    and getattr(conv, "groups", 1) == 1)
    if on_this_path and _fused(x, kernel, 2 * h, 2 * w):
        return _fused_conv3x3(x, kernel, bias, upsample=True)
    if not (on_this_path and b * h * w >= c):
        return conv(upsample_nearest(x, 2))
    folded = _SUBPIXEL_FOLD.astype(kernel.dtype) @ kernel.reshape(o, 9, c)  # (O, 16, C)
    taps = folded.transpose(1, 2, 0).reshape(2, 2, 2, 2, c, o)  # [a, b, ry, rx] -> (C, O)
    flat, wp = _row_layout(x)
    rows = []
    for a in range(2):
        phases = []
        for col in range(2):
            y = None if bias is None else mx.broadcast_to(bias.astype(x.dtype), (b, h * wp, o))
            for ry in range(2):
                for rx in range(2):
                    start = (a + ry) * wp + col + rx  # small-map row i - 1 + a + ry is padded row i + a + ry
                    view = flat[:, start:start + h * wp]
                    tap = taps[a, col, ry, rx]
                    y = view @ tap if y is None else mx.addmm(y, view, tap)
            phases.append(y.reshape(b, h, wp, o)[:, :, :w])
        rows.append(mx.stack(phases, axis=3))  # (b, h, w, 2, o): output columns 2j, 2j + 1
    return mx.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, o)  # (b, h, 2, w, 2, o): rows 2i, 2i + 1
