"""Real trained weights: TAEF2 (TAESD, FLUX.2 variant) round-trips real photos as in PyTorch."""

import mlx.core as mx
import numpy as np
import pytest
import taesd_reference
import torch
from images import PHOTOS, load_photo, psnr
from reference import DATA

from mlx_musicviz.models import AutoencoderTiny

TAEF2 = DATA / "weights" / "taef2"


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


@pytest.mark.slow
def test_taef2_quantized_convolutions_on_real_photos():
    """Quantize every convolution of the real encoder and decoder; round-trip the real photos.
    8 bits must stay within 0.5 dB of float; every level is reported."""
    from mlx_musicviz.models.quantized import apply_plan, quantization_plan

    path = TAEF2 / "taef2_encoder.safetensors"
    photos = [load_photo(p) for p in PHOTOS]
    baseline = [psnr(mlx_round_trip(AutoencoderTiny.from_pretrained(path), img), img) for img in photos]
    print("TAEF2 float: " + ", ".join(f"{p} {v:.2f} dB" for p, v in zip(PHOTOS, baseline)))
    for group_size in (32, 64, 128):
        for bits in (8, 4):
            vae = AutoencoderTiny.from_pretrained(path)
            plan = quantization_plan(vae, bits, group_size)
            apply_plan(vae, plan)
            got = [psnr(mlx_round_trip(vae, img), img) for img in photos]
            print(f"TAEF2 {bits}-bit g{group_size}: {len(plan.modules)} convolutions quantized, "
                  f"{len(plan.float_modules)} kept float; " + ", ".join(f"{p} {v:.2f} dB" for p, v in zip(PHOTOS, got)))
            assert len(plan.modules) > len(plan.float_modules) or group_size == 128
            if bits == 8:
                assert all(b - g <= 0.5 for b, g in zip(baseline, got))
            else:
                assert all(g > 20 for g in got)  # a broken layer gives noise (< 15 dB)
