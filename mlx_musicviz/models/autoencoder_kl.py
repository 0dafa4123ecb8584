"""AutoencoderKL in MLX (SD1.5/2.1's VAE, SD-Turbo's `vae/`, the SDXS `vae_large/`), diffusers' names: the
decoder, and the encoder where asked for (LoRA training encodes its images; generating never does)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .configs import KLVAEConfig
from .layers import Attention, Conv2d, Downsample2D, ResnetBlock2D, Upsample2D, group_norm


class VAEAttention(Attention):
    """Single-head spatial self-attention with a GroupNorm in front and a residual (diffusers' mid-block)."""

    def __init__(self, channels: int, groups: int):
        super().__init__(channels, 1, channels, qkv_bias=True)
        self.group_norm = group_norm(groups, channels, 1e-6)

    def __call__(self, x):
        b, h, w, c = x.shape
        y = self.group_norm(x).reshape(b, h * w, c)
        return x + super().__call__(y).reshape(b, h, w, c)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = [ResnetBlock2D(channels, channels, None, groups, 1e-6) for _ in range(2)]
        if attention:
            self.attentions = [VAEAttention(channels, groups)]

    def __call__(self, x):
        x = self.resnets[0](x)
        if "attentions" in self:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class ResnetStack(nn.Module):
    """`layers` resnets, then a resampler under diffusers' name for it: the encoder's DownEncoderBlock2D
    (`downsamplers`) and the decoder's UpDecoderBlock2D (`upsamplers`)."""

    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, resampler: str | None = None):
        super().__init__()
        self.resnets = [
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups, 1e-6) for i in range(layers)
        ]
        self.resampler = resampler
        if resampler == "upsamplers":
            self.upsamplers = [Upsample2D(out_channels)]
        elif resampler == "downsamplers":
            self.downsamplers = [Downsample2D(out_channels, padding=0)]

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return self[self.resampler][0](x) if self.resampler else x


class EncoderKL(nn.Module):
    """Images -> the latent distribution's moments (mean and log-variance, 2 x latent channels)."""

    def __init__(self, config: KLVAEConfig):
        super().__init__()
        ch = list(config.block_out_channels)
        g = config.norm_num_groups
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], 3, padding=1)
        self.down_blocks = []
        prev = ch[0]
        for i, out in enumerate(ch):
            self.down_blocks.append(ResnetStack(prev, out, config.layers_per_block, g,
                                                "downsamplers" if i < len(ch) - 1 else None))
            prev = out
        self.mid_block = MidBlock(ch[-1], g, config.mid_block_add_attention)
        self.conv_norm_out = group_norm(g, ch[-1], 1e-6)
        self.conv_out = Conv2d(ch[-1], 2 * config.latent_channels, 3, padding=1)

    def __call__(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(self.conv_norm_out.silu(self.mid_block(x)))


class DecoderKL(nn.Module):
    def __init__(self, config: KLVAEConfig):
        super().__init__()
        ch = list(reversed(config.block_out_channels))
        g = config.norm_num_groups
        self.conv_in = nn.Conv2d(config.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], g, config.mid_block_add_attention)
        self.up_blocks = []
        prev = ch[0]
        for i, out in enumerate(ch):
            self.up_blocks.append(ResnetStack(prev, out, config.layers_per_block + 1, g,
                                              "upsamplers" if i < len(ch) - 1 else None))
            prev = out
        self.conv_norm_out = group_norm(g, ch[-1], 1e-6)
        self.conv_out = Conv2d(ch[-1], config.out_channels, 3, padding=1)

    def __call__(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_norm_out.silu(x))


class AutoencoderKL(nn.Module):
    """`decode(latents)` -> NHWC images in [-1, 1] (unclamped); with `encoder`, `encode(images)` -> the
    latent distribution's mean. Latents here are the UNet's divided by `config.scaling_factor` (as
    diffusers' pipeline does)."""

    def __init__(self, config: KLVAEConfig, encoder: bool = False, decoder: bool = True):
        super().__init__()
        self.config = config
        if encoder:
            self.encoder = EncoderKL(config)
            if config.use_quant_conv:
                self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        if decoder:
            if config.use_post_quant_conv:
                self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)
            self.decoder = DecoderKL(config)

    def encode(self, images: mx.array) -> mx.array:
        moments = self.encoder(images)
        if "quant_conv" in self:
            moments = self.quant_conv(moments)
        return moments[..., : self.config.latent_channels]

    def decode(self, latents: mx.array) -> mx.array:
        if "post_quant_conv" in self:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)
