"""Pure functions from PyTorch parameter names and layouts to the MLX modules' ones.

The MLX modules use diffusers / transformers names, so most keys pass through unchanged;
what changes is the layout of convolution kernels and a few wrappers.
"""

from __future__ import annotations

import mlx.core as mx

# Tensors stored in checkpoints that are buffers, not parameters.
IGNORED_SUFFIXES = ("position_ids",)


def torch_conv_to_mlx(value: mx.array) -> mx.array:
    """(out, in, kh, kw) -> (out, kh, kw, in)."""
    return value.transpose(0, 2, 3, 1) if value.ndim == 4 else value


def text_encoder_key(key: str) -> str | None:
    if key.endswith(IGNORED_SUFFIXES):
        return None
    if key.startswith(("text_projection", "logit_scale", "vision_model")):
        return None
    return key if key.startswith("text_model.") else f"text_model.{key}"


def text_encoder_with_projection_key(key: str) -> str | None:
    if key.startswith("text_projection"):
        return key
    return text_encoder_key(key)


def unet_key(key: str) -> str | None:
    return key


def kl_encoder_key(key: str) -> str | None:
    # The encoder half, kept apart from the decoder's weights (see checkpoint_format.ENCODER_NAME).
    return key if key.startswith(("encoder.", "quant_conv.")) else None


def tiny_vae_key(key: str) -> str | None:
    return key


def kl_vae_key(key: str) -> str | None:
    # Only the decoder half is ported (images are generated, never encoded, with the large VAE).
    if key.startswith(("decoder.", "post_quant_conv.")):
        return key
    return None


def taesd_key(key: str, part: str) -> str:
    """Bare TAESD `nn.Sequential` keys -> diffusers' `encoder.layers.N` / `decoder.layers.N`.

    TAESD decoder files count the tanh clamp as layer 0; diffusers applies it outside the list.
    """
    index, _, rest = key.partition(".")
    n = int(index) - (1 if part == "decoder" else 0)
    return f"{part}.layers.{n}.{rest}"


def map_state_dict(weights: dict[str, mx.array], key_fn) -> dict[str, mx.array]:
    out = {}
    for key, value in weights.items():
        new = key_fn(key)
        if new is not None:
            out[new] = torch_conv_to_mlx(value)
    return out
