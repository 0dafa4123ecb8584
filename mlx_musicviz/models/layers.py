"""Building blocks shared by the UNet, the VAEs and the text encoder (NHWC, diffusers names):
architecture over stock mlx layers and the ops in `mlx_musicviz.ops`."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from .. import ops


class GroupNorm(nn.GroupNorm):
    """PyTorch-compatible GroupNorm on NHWC tensors (`ops.group_norm`), with SiLU fused on request."""

    def __call__(self, x: mx.array) -> mx.array:
        return ops.group_norm(x, self.num_groups, self.eps, self.get("weight"), self.get("bias"))

    def silu(self, x: mx.array) -> mx.array:
        """silu(self(x)), the normalization and the activation in one pass where the backend allows."""
        return ops.group_norm(x, self.num_groups, self.eps, self.get("weight"), self.get("bias"), silu=True)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm computed by `ops.layer_norm`."""

    def __call__(self, x: mx.array) -> mx.array:
        return ops.layer_norm(x, self.eps, self.get("weight"), self.get("bias"))


class Conv2d(nn.Conv2d):
    """nn.Conv2d computed by `ops.conv2d`, which can add a residual and apply ReLU in its epilogue."""

    def __call__(self, x: mx.array, *, residual: mx.array | None = None, relu: bool = False) -> mx.array:
        """conv(x) [+ residual] [then ReLU]."""
        if getattr(self, "groups", 1) != 1:
            y = super().__call__(x)
            y = y if residual is None else y + residual
            return nn.relu(y) if relu else y
        return ops.conv2d(x, self.weight, self.get("bias"), self.stride, self.padding, self.dilation,
                          residual=residual, relu=relu)


def group_norm(groups: int, channels: int, eps: float, affine: bool = True) -> GroupNorm:
    return GroupNorm(groups, channels, eps=eps, affine=affine, pytorch_compatible=True)


def timestep_embedding(
    timesteps: mx.array, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0, max_period: float = 10000.0
) -> mx.array:
    """Sinusoidal embedding of diffusion timesteps, shape (N,) -> (N, dim), as diffusers computes it."""
    half = dim // 2
    exponent = -math.log(max_period) * mx.arange(half, dtype=mx.float32) / (half - freq_shift)
    args = timesteps.astype(mx.float32)[:, None] * mx.exp(exponent)[None, :]
    sin, cos = mx.sin(args), mx.cos(args)
    emb = mx.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = mx.pad(emb, [(0, 0), (0, 1)])
    return emb


class Attention(nn.Module):
    """Multi-head attention with diffusers' parameter names (to_q, to_k, to_v, to_out.0)."""

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        qkv_bias: bool = False,
    ):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.scale = dim_head**-0.5
        self.to_q = nn.Linear(query_dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_out = [nn.Linear(inner, query_dim)]

    def __call__(self, x: mx.array, context: mx.array | None = None, mask: mx.array | None = None) -> mx.array:
        context = x if context is None else context
        out = ops.multi_head_attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads, self.scale, mask)
        return self.to_out[0](out)


class ResnetBlock2D(nn.Module):
    """diffusers' ResnetBlock2D: GroupNorm-SiLU-conv twice, optional time embedding, 1x1 shortcut."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        groups: int = 32,
        eps: float = 1e-5,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.norm1 = group_norm(groups, in_channels, eps)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        if temb_channels is not None:
            self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = group_norm(groups, out_channels, eps)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1)
        self.output_scale_factor = output_scale_factor

    def __call__(self, x: mx.array, temb: mx.array | None = None) -> mx.array:
        h = self.conv1(self.norm1.silu(x))
        if temb is not None:
            h = h + self.time_emb_proj(ops.silu(temb))[:, None, None, :]
        shortcut = self.conv_shortcut(x) if "conv_shortcut" in self else x
        out = self.conv2(self.norm2.silu(h), residual=shortcut)  # the shortcut added in the convolution's epilogue
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class Downsample2D(nn.Module):
    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def __call__(self, x: mx.array) -> mx.array:
        if self.padding == 0:
            x = mx.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = Conv2d(channels, out_channels or channels, 3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        return ops.upsample_conv(x, self.conv)
