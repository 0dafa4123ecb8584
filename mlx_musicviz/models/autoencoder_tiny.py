"""AutoencoderTiny (TAESD) in MLX: the SDXS `vae/`, and TAESD-format encoder/decoder files.

Layer lists mirror diffusers' `encoder.layers.N` / `decoder.layers.N`, so diffusers keys map
one to one; bare TAESD files (`1.conv.0.weight`) are the same list, and the decoder's files
count its leading clamp as index 0 (see `convert`).
Images are NHWC floats in [-1, 1] on this API, as in diffusers.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .. import ops
from .configs import TinyVAEConfig
from .layers import Conv2d, group_norm


class TinyBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, midblock_gn: bool = False):
        super().__init__()
        self.conv = [
            Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ReLU(),
            Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ReLU(),
            Conv2d(out_channels, out_channels, 3, padding=1),
        ]
        if in_channels != out_channels:
            self.skip = Conv2d(in_channels, out_channels, 1, bias=False)
        if midblock_gn:
            # TAESD FLUX.2 branch: 1x1 conv -> GroupNorm(4) -> ReLU -> 1x1 conv, added to the input.
            wide = in_channels * 4
            self.pool = [
                Conv2d(in_channels, wide, 1, bias=False),
                group_norm(4, wide, 1e-5),
                nn.ReLU(),
                Conv2d(wide, in_channels, 1, bias=False),
            ]

    def __call__(self, x):
        if "pool" in self:
            x = x + _run(self.pool, x)
        first, _, second, _, third = self.conv  # the ReLUs (conv.1, conv.3) are applied by the convolutions
        skip = self.skip(x) if "skip" in self else x
        return third(second(first(x, relu=True), relu=True), residual=skip, relu=True)


class Upsample(nn.Module):
    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def __call__(self, x):
        return ops.upsample_nearest(x, self.factor)


def _run(layers, x):
    for layer in layers:
        x = layer(x)
    return x


class EncoderTiny(nn.Module):
    def __init__(self, config: TinyVAEConfig):
        super().__init__()
        ch = config.encoder_block_out_channels
        counts = config.num_encoder_blocks
        total = sum(counts)
        layers, index = [], 0
        for i, n in enumerate(counts):
            if i == 0:
                layers.append(Conv2d(config.in_channels, ch[0], 3, padding=1))
            else:
                layers.append(Conv2d(ch[i - 1], ch[i], 3, stride=2, padding=1, bias=False))
            for _ in range(n):
                layers.append(TinyBlock(ch[i], ch[i], index >= total - config.midblock_gn_blocks))
                index += 1
        layers.append(Conv2d(ch[-1], config.latent_channels, 3, padding=1))
        self.layers = layers

    def __call__(self, images):
        """Images in [-1, 1] (N, H, W, 3) -> raw latents (N, H/8, W/8, C)."""
        return _run(self.layers, (images + 1) / 2)


class DecoderTiny(nn.Module):
    def __init__(self, config: TinyVAEConfig):
        super().__init__()
        ch = config.decoder_block_out_channels
        counts = config.num_decoder_blocks
        layers = [Conv2d(config.latent_channels, ch[0], 3, padding=1), nn.ReLU()]
        index = 0
        for i, n in enumerate(counts):
            final = i == len(counts) - 1
            for _ in range(n):
                layers.append(TinyBlock(ch[i], ch[i], index < config.midblock_gn_blocks))
                index += 1
            if not final:
                layers.append(Upsample(config.upsampling_scaling_factor))
            out = config.out_channels if final else ch[i]
            layers.append(Conv2d(ch[i], out, 3, padding=1, bias=final))
        self.layers = layers

    def __call__(self, latents):
        """Raw latents (N, h, w, C) -> images in [-1, 1] (unclamped) (N, 8h, 8w, 3)."""
        x = mx.tanh(latents / 3) * 3
        remaining = iter(self.layers)
        for layer in remaining:
            if isinstance(layer, Upsample) and layer.factor == 2:
                # every upsampling is followed by its 3x3 convolution; looked up in the module when called,
                # where the benchmark's layer watcher finds it
                x = ops.upsample_conv(x, next(remaining))
            else:
                x = layer(x)
        return x * 2 - 1


class AutoencoderTiny(nn.Module):
    def __init__(self, config: TinyVAEConfig, encoder: bool = True, decoder: bool = True):
        super().__init__()
        self.config = config
        if encoder:
            self.encoder = EncoderTiny(config)
        if decoder:
            self.decoder = DecoderTiny(config)

    def encode(self, images: mx.array) -> mx.array:
        """NHWC images in [-1, 1] -> latents."""
        return self.encoder(images)

    def decode(self, latents: mx.array) -> mx.array:
        """Latents -> NHWC images in [-1, 1] (not clamped, as diffusers)."""
        return self.decoder(latents)

    @classmethod
    def from_pretrained(cls, path, dtype=mx.float32) -> "AutoencoderTiny":
        """Load a diffusers `vae/` folder (AutoencoderTiny), a converted MLX folder, or a TAESD
        file pair: pass the encoder file, the decoder file, or a folder holding `*_encoder` and
        `*_decoder` safetensors. See `mlx_musicviz.convert.load_tiny_autoencoder`."""
        from ..convert import load_tiny_autoencoder

        return load_tiny_autoencoder(path, dtype=dtype)
