"""AutoencoderTiny and AutoencoderKL (encoder and decoder) against diffusers."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from reference import build_kl_vae, build_tiny_vae, nchw, nhwc, read_reference_config, rel_l2

from mlx_musicviz.convert import convert_component
from mlx_musicviz.models import AutoencoderTiny, build_model
from mlx_musicviz.weights import load_into


def _load(tmp_path, ref, name):
    ref.save_pretrained(tmp_path / name, safe_serialization=True)
    cfg, weights = convert_component(tmp_path / name)
    return load_into(build_model(cfg), weights, name)


@pytest.mark.parametrize("size", [64, 512])
def test_tiny_vae_matches_diffusers(tmp_path, size):
    ref = build_tiny_vae(read_reference_config("sdxs-512-0.9", "vae"), seed=7)
    model = _load(tmp_path, ref, "vae")
    rng = np.random.default_rng(0)
    latents = (rng.standard_normal((1, size // 8, size // 8, 4)) * 2).astype(np.float32)
    images = rng.uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        dec = nhwc(ref.decode(nchw(latents)).sample)
        enc = nhwc(ref.encode(nchw(images)).latents)
    assert rel_l2(np.array(model.decode(mx.array(latents))), dec) <= 1e-4
    assert rel_l2(np.array(model.encode(mx.array(images))), enc) <= 1e-4


def test_tiny_vae_from_pretrained_diffusers_folder(tmp_path):
    ref = build_tiny_vae(seed=8)
    ref.save_pretrained(tmp_path / "vae", safe_serialization=True)
    model = AutoencoderTiny.from_pretrained(tmp_path / "vae")
    latents = np.random.default_rng(1).standard_normal((2, 8, 8, 4)).astype(np.float32)
    with torch.no_grad():
        expected = nhwc(ref.decode(nchw(latents)).sample)
    assert rel_l2(np.array(model.decode(mx.array(latents))), expected) <= 1e-4


def _kl_encoder(tmp_path, ref):
    """The MLX encoder half of the KL VAE `ref`, from the weights the converter keeps for it."""
    from mlx_musicviz.convert.checkpoint import kl_encoder_weights
    from mlx_musicviz.models import AutoencoderKL, KLVAEConfig

    ref.save_pretrained(tmp_path / "vae", safe_serialization=True)
    cfg, _ = convert_component(tmp_path / "vae")
    model = AutoencoderKL(KLVAEConfig.from_dict(cfg), encoder=True, decoder=False)
    return load_into(model, kl_encoder_weights(tmp_path / "vae"), "vae encoder")


@pytest.mark.parametrize("full_size", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_kl_encoder_matches_diffusers(tmp_path, full_size):
    """The latent distribution's mean, small and in SD's layout at 512x512 (what LoRA training encodes)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(11)
    ref = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2).eval() if full_size else \
        build_kl_vae(seed=11)
    side = 512 if full_size else 64
    images = np.random.default_rng(4).uniform(-1, 1, (1 if full_size else 2, side, side, 3)).astype(np.float32)
    with torch.no_grad():
        expected = nhwc(ref.encode(nchw(images)).latent_dist.mean)
    got = np.array(_kl_encoder(tmp_path, ref).encode(mx.array(images)))
    print(f"KL encoder ({'SD layout, 512 px' if full_size else 'small'}): relative L2 {rel_l2(got, expected):.1e}")
    assert got.shape == expected.shape and rel_l2(got, expected) <= 1e-4


def test_kl_decoder_matches_diffusers(tmp_path):
    ref = build_kl_vae(seed=9)
    model = _load(tmp_path, ref, "vae_large")
    latents = np.random.default_rng(2).standard_normal((2, 16, 16, 4)).astype(np.float32)
    with torch.no_grad():
        expected = nhwc(ref.decode(nchw(latents)).sample)
    assert rel_l2(np.array(model.decode(mx.array(latents))), expected) <= 1e-4


@pytest.mark.slow
def test_kl_decoder_full_size_sd_layout(tmp_path):
    """SD1.5/2.1's VAE layout (128/256/512/512, 2 layers per block) at 64x64 latents -> 512x512."""
    from diffusers import AutoencoderKL

    torch.manual_seed(10)
    ref = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4).eval()
    model = _load(tmp_path, ref, "vae_large")
    latents = np.random.default_rng(3).standard_normal((1, 64, 64, 4)).astype(np.float32)
    with torch.no_grad():
        expected = nhwc(ref.decode(nchw(latents)).sample)
    assert rel_l2(np.array(model.decode(mx.array(latents))), expected) <= 1e-4
