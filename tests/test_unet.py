"""UNet2DConditionModel: MLX against diffusers on the same weights and inputs."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from reference import SMALL_UNETS, build_unet, nchw, nhwc, read_reference_config, rel_l2

from mlx_musicviz.convert import convert_component
from mlx_musicviz.models import build_model
from mlx_musicviz.weights import load_into


def _compare(tmp_path, config, latent_hw, seed=0, batch=2, t=999.0):
    ref = build_unet(config, seed=seed)
    ref.save_pretrained(tmp_path / "unet", safe_serialization=True)
    del ref
    ref = __import__("diffusers").UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    cfg, weights = convert_component(tmp_path / "unet")
    model = load_into(build_model(cfg), weights, "unet")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, latent_hw, latent_hw, cfg["in_channels"])).astype(np.float32)
    ctx = rng.standard_normal((batch, 77, cfg["cross_attention_dim"])).astype(np.float32)
    with torch.no_grad():
        expected = nhwc(ref(nchw(x), t, encoder_hidden_states=torch.from_numpy(ctx)).sample)
    got = model(mx.array(x), t, mx.array(ctx))
    mx.eval(got)
    return rel_l2(np.array(got), expected)


@pytest.mark.parametrize("layout", sorted(SMALL_UNETS))
def test_small_unet_matches_diffusers(tmp_path, layout):
    err = _compare(tmp_path, SMALL_UNETS[layout], 16)
    assert err <= 1e-4, f"{layout}: relative L2 error {err:.2e}"


def test_unet_timestep_matters(tmp_path):
    """A guard that the comparison can fail: a different timestep gives a different output."""
    config = SMALL_UNETS["sdxs09"]
    assert _compare(tmp_path, config, 8, t=999.0) <= 1e-4
    ref = build_unet(config, seed=0)
    with torch.no_grad():
        x = torch.randn(1, 4, 8, 8)
        ctx = torch.randn(1, 77, 64)
        a, b = ref(x, 999, ctx).sample, ref(x, 500, ctx).sample
    assert rel_l2(a.numpy(), b.numpy()) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("model", ["sdxs-512-0.9", "sdxs-512-dreamshaper", "sd-turbo"])
def test_full_size_unet_matches_diffusers(tmp_path, model):
    err = _compare(tmp_path, read_reference_config(model, "unet"), 64, batch=1)
    print(f"full-size {model} UNet: relative L2 error {err:.2e}")
    assert err <= 1e-4, f"{model}: relative L2 error {err:.2e}"
