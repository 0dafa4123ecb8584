"""UNet2DConditionModel in MLX, built entirely from the checkpoint's `unet/config.json`.

Parameter names follow diffusers (down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q...),
so converting a checkpoint is a key-for-key copy with convolution weights moved to NHWC.
Covers SD1.5 / SD2.1 (4 levels, mid block), sdxs-512-0.9 (3 levels, no mid block,
`only_cross_attention` first level, linear projections), sdxs-512-dreamshaper and SDXL (`text_time`
added conditioning: the pooled text embedding and the size/crop time ids join the time embedding).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .. import ops
from .configs import UNetConfig
from .layers import (
    Attention,
    Conv2d,
    Downsample2D,
    LayerNorm,
    ResnetBlock2D,
    Upsample2D,
    group_norm,
    timestep_embedding,
)


class FeedForward(nn.Module):
    """GEGLU feed-forward: net.0.proj (dim -> 2*inner), GELU gate, net.2 (inner -> dim)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = [GEGLU(dim, inner), nn.Identity(), nn.Linear(inner, dim)]

    def __call__(self, x: mx.array) -> mx.array:
        return self.net[2](self.net[0](x))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def __call__(self, x: mx.array) -> mx.array:
        return ops.geglu(self.proj(x))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, only_cross_attention: bool):
        super().__init__()
        self.only_cross_attention = only_cross_attention
        self.norm1 = LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, heads, dim_head, context_dim if only_cross_attention else None)
        self.norm2 = LayerNorm(dim, eps=1e-5)
        self.attn2 = Attention(dim, heads, dim_head, context_dim)
        self.norm3 = LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim)

    def __call__(self, x: mx.array, context: mx.array) -> mx.array:
        x = x + self.attn1(self.norm1(x), context if self.only_cross_attention else None)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    def __init__(
        self,
        channels: int,
        heads: int,
        context_dim: int,
        layers: int,
        groups: int,
        use_linear_projection: bool,
        only_cross_attention: bool,
    ):
        super().__init__()
        self.use_linear_projection = use_linear_projection
        self.norm = group_norm(groups, channels, 1e-6)
        if use_linear_projection:
            self.proj_in = nn.Linear(channels, channels)
            self.proj_out = nn.Linear(channels, channels)
        else:
            self.proj_in = nn.Conv2d(channels, channels, 1)
            self.proj_out = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = [
            BasicTransformerBlock(channels, heads, channels // heads, context_dim, only_cross_attention)
            for _ in range(layers)
        ]

    def __call__(self, x: mx.array, context: mx.array) -> mx.array:
        b, h, w, c = x.shape
        residual = x
        x = self.norm(x)
        if self.use_linear_projection:
            x = self.proj_in(x.reshape(b, h * w, c))
        else:
            x = self.proj_in(x).reshape(b, h * w, c)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear_projection:
            x = self.proj_out(x).reshape(b, h, w, c)
        else:
            x = self.proj_out(x.reshape(b, h, w, c))
        return x + residual


def _transformer(cfg: UNetConfig, level: int, channels: int) -> Transformer2DModel:
    return Transformer2DModel(
        channels,
        cfg.heads[level],
        cfg.cross_attention_dim,
        cfg.transformer_layers[level],
        cfg.norm_num_groups,
        cfg.use_linear_projection,
        cfg.only_cross[level],
    )


class DownBlock(nn.Module):
    """CrossAttnDownBlock2D (with attentions) or DownBlock2D (without)."""

    def __init__(self, cfg: UNetConfig, level: int, in_channels: int, out_channels: int, temb: int):
        super().__init__()
        n = cfg.layers[level]
        self.resnets = [
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb, cfg.norm_num_groups, cfg.norm_eps)
            for i in range(n)
        ]
        if cfg.down_block_types[level] == "CrossAttnDownBlock2D":
            self.attentions = [_transformer(cfg, level, out_channels) for _ in range(n)]
        if level < len(cfg.block_out_channels) - 1:
            self.downsamplers = [Downsample2D(out_channels, cfg.downsample_padding)]

    def __call__(self, x, temb, context):
        outputs = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if "attentions" in self:
                x = self.attentions[i](x, context)
            outputs.append(x)
        if "downsamplers" in self:
            x = self.downsamplers[0](x)
            outputs.append(x)
        return x, outputs


class UpBlock(nn.Module):
    """CrossAttnUpBlock2D or UpBlock2D: resnets take the skip connection concatenated on channels."""

    def __init__(self, cfg: UNetConfig, level: int, prev_channels: int, out_channels: int, in_channels: int, temb: int):
        super().__init__()
        # `level` counts from the deepest block (up_blocks order); settings are reversed.
        depth = len(cfg.block_out_channels) - 1 - level
        n = cfg.layers[depth] + 1
        self.resnets = []
        for i in range(n):
            skip = in_channels if i == n - 1 else out_channels
            res_in = prev_channels if i == 0 else out_channels
            self.resnets.append(ResnetBlock2D(res_in + skip, out_channels, temb, cfg.norm_num_groups, cfg.norm_eps))
        if cfg.up_block_types[level] == "CrossAttnUpBlock2D":
            self.attentions = [_transformer(cfg, depth, out_channels) for _ in range(n)]
        if level < len(cfg.block_out_channels) - 1:
            self.upsamplers = [Upsample2D(out_channels)]

    def __call__(self, x, skips, temb, context):
        for i, resnet in enumerate(self.resnets):
            x = resnet(mx.concatenate([x, skips.pop()], axis=-1), temb)
            if "attentions" in self:
                x = self.attentions[i](x, context)
        if "upsamplers" in self:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """UNetMidBlock2DCrossAttn: resnet, (transformer, resnet) x layers."""

    def __init__(self, cfg: UNetConfig, channels: int, temb: int):
        super().__init__()
        level = len(cfg.block_out_channels) - 1
        self.resnets = [ResnetBlock2D(channels, channels, temb, cfg.norm_num_groups, cfg.norm_eps) for _ in range(2)]
        self.attentions = [
            Transformer2DModel(
                channels,
                cfg.heads[level],
                cfg.cross_attention_dim,
                cfg.transformer_layers[level],
                cfg.norm_num_groups,
                cfg.use_linear_projection,
                False,
            )
        ]

    def __call__(self, x, temb, context):
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context), temb)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def __call__(self, x):
        return self.linear_2(ops.silu(self.linear_1(x)))


class UNet2DConditionModel(nn.Module):
    """Noise predictor. Input latents NHWC (N, H/8, W/8, 4); output the same shape."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        ch = config.block_out_channels
        temb = ch[0] * 4
        pad_in = (config.conv_in_kernel - 1) // 2
        pad_out = (config.conv_out_kernel - 1) // 2
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], config.conv_in_kernel, padding=pad_in)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        if config.addition_embed_type == "text_time":
            self.add_embedding = TimestepEmbedding(config.projection_class_embeddings_input_dim, temb)
        self.down_blocks = []
        prev = ch[0]
        for level, out in enumerate(ch):
            self.down_blocks.append(DownBlock(config, level, prev, out, temb))
            prev = out
        if config.mid_block_type is not None:
            self.mid_block = MidBlock(config, ch[-1], temb)
        rev = list(reversed(ch))
        self.up_blocks = []
        prev = rev[0]
        for level, out in enumerate(rev):
            inp = rev[min(level + 1, len(ch) - 1)]
            self.up_blocks.append(UpBlock(config, level, prev, out, inp, temb))
            prev = out
        self.conv_norm_out = group_norm(config.norm_num_groups, ch[0], config.norm_eps)
        self.conv_out = Conv2d(ch[0], config.out_channels, config.conv_out_kernel, padding=pad_out)

    def time_embed(self, timesteps: mx.array | float | int, batch: int = 1) -> mx.array:
        """Time embedding (N, 4*C) for timesteps; compute it once per timestep and pass it as `temb`."""
        t = mx.array(timesteps, dtype=mx.float32).reshape(-1)
        if t.shape[0] == 1 and batch > 1:
            t = mx.broadcast_to(t, (batch,))
        c = self.config
        emb = timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)
        return self.time_embedding(emb.astype(self.conv_in.weight.dtype))

    def add_embed(self, text_embeds: mx.array, time_ids: mx.array) -> mx.array:
        """SDXL's added conditioning (N, 4*C), summed into the time embedding: the pooled text embedding
        (N, P) and the 6 time ids (N, 6: original height and width, crop top and left, target height and
        width, in pixels), each id embedded as a sinusoid of `addition_time_embed_dim`."""
        c = self.config
        ids = timestep_embedding(time_ids.reshape(-1), c.addition_time_embed_dim, c.flip_sin_to_cos, c.freq_shift)
        ids = ids.reshape(time_ids.shape[0], -1)
        cond = mx.concatenate([text_embeds.astype(mx.float32), ids], axis=-1)
        return self.add_embedding(cond.astype(self.conv_in.weight.dtype))

    def __call__(
        self,
        sample: mx.array,
        timestep: mx.array | float | int | None,
        encoder_hidden_states: mx.array,
        temb: mx.array | None = None,
        added_cond: tuple[mx.array, mx.array] | None = None,
    ) -> mx.array:
        """`temb`: the time embedding when computed once (`time_embed`); `added_cond`: SDXL's (pooled
        text embeddings (N, P), time ids (N, 6)), which `add_embed` adds to it."""
        if temb is None:
            temb = self.time_embed(timestep, sample.shape[0])
        if "add_embedding" in self:
            if added_cond is None:
                raise ValueError("this UNet (SDXL) needs added_cond: pooled text embeddings and time ids")
            temb = temb + self.add_embed(*added_cond)
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, outs = block(x, temb, encoder_hidden_states)
            skips.extend(outs)
        if "mid_block" in self:
            x = self.mid_block(x, temb, encoder_hidden_states)
        for block in self.up_blocks:
            x = block(x, skips, temb, encoder_hidden_states)
        return self.conv_out(self.conv_norm_out.silu(x))
