"""AutoencoderKL decoder in MLX (SD1.5/2.1's VAE, the SDXS `vae_large/`), diffusers' names."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .configs import KLVAEConfig
from .layers import Attention, Conv2d, ResnetBlock2D, Upsample2D, group_norm


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


class UpDecoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = [
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups, 1e-6) for i in range(layers)
        ]
        if upsample:
            self.upsamplers = [Upsample2D(out_channels)]

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if "upsamplers" in self:
            x = self.upsamplers[0](x)
        return x


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
            self.up_blocks.append(UpDecoderBlock(prev, out, config.layers_per_block + 1, g, i < len(ch) - 1))
            prev = out
        self.conv_norm_out = group_norm(g, ch[-1], 1e-6)
        self.conv_out = Conv2d(ch[-1], config.out_channels, 3, padding=1)

    def __call__(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_norm_out.silu(x))


class AutoencoderKL(nn.Module):
    """Decoder half of AutoencoderKL: `decode(latents)` -> NHWC images in [-1, 1] (unclamped).

    `latents` are the UNet's latents divided by `config.scaling_factor` (as diffusers' pipeline does).
    """

    def __init__(self, config: KLVAEConfig):
        super().__init__()
        self.config = config
        if config.use_post_quant_conv:
            self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)
        self.decoder = DecoderKL(config)

    def decode(self, latents: mx.array) -> mx.array:
        if "post_quant_conv" in self:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)
