"""Real trained weights: TAEF2 (TAESD, FLUX.2 variant) round-trips real photos as in PyTorch."""

import mlx.core as mx
import numpy as np
import pytest
import taesd_reference
import torch
from images import PHOTOS, load_photo, psnr
from reference import SHARED

from mlx_musicviz.models import AutoencoderTiny

TAEF2 = SHARED / "data" / "weights" / "taef2"


def mlx_round_trip(vae, img01):
    x = mx.array(img01[None] * 2 - 1)
    out = (vae.decode(vae.encode(x)) + 1) / 2
    return np.clip(np.array(out[0]), 0, 1)


def torch_round_trip(enc, dec, img01):
    with torch.no_grad():
        x = torch.from_numpy(img01.transpose(2, 0, 1)[None].copy())
        return dec(enc(x)).clamp(0, 1)[0].numpy().transpose(1, 2, 0)


@pytest.fixture(scope="module")
def taef2():
    return AutoencoderTiny.from_pretrained(TAEF2 / "taef2_encoder.safetensors")


def test_taef2_loads_as_flux2_variant(taef2):
    assert taef2.config.latent_channels == 32
    assert taef2.config.midblock_gn_blocks == 3


@pytest.mark.parametrize("photo", PHOTOS)
def test_taef2_round_trip_psnr_matches_pytorch(taef2, photo):
    img = load_photo(photo)
    enc, dec = taesd_reference.load(TAEF2 / "taef2_encoder.safetensors", TAEF2 / "taef2_decoder.safetensors")
    ref = psnr(torch_round_trip(enc, dec, img), img)
    got = psnr(mlx_round_trip(taef2, img), img)
    print(f"{photo}: MLX {got:.3f} dB, PyTorch {ref:.3f} dB")
    assert abs(got - ref) <= 0.05
    assert got > 25  # a broken port gives noise (< 15 dB); the reference is ~31-33 dB
