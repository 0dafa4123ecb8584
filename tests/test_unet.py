"""UNet2DConditionModel: MLX against diffusers on the same weights and inputs."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from reference import SMALL_UNETS, build_unet, nchw, nhwc, read_reference_config, rel_l2

from mlx_musicviz.convert import convert_component
from mlx_musicviz.models import build_model
from mlx_musicviz.weights import load_into


def _inputs(config, latent_hw, seed, batch):
    """Latents, context and, for SDXL's text_time conditioning, pooled embeddings and time ids (numpy)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, latent_hw, latent_hw, config.get("in_channels", 4))).astype(np.float32)
    ctx = rng.standard_normal((batch, 77, config["cross_attention_dim"])).astype(np.float32)
    if config.get("addition_embed_type") != "text_time":
        return x, ctx, None
    width = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    pooled = rng.standard_normal((batch, width)).astype(np.float32)
    ids = np.tile(np.array([[1024, 768, 16, 0, 512, 512]], dtype=np.float32), (batch, 1))  # every id differs
    return x, ctx, (pooled, ids)


def _run(ref, model, x, ctx, added, t):
    """(MLX output, diffusers output) as NHWC numpy."""
    kwargs = {} if added is None else {"added_cond_kwargs": {"text_embeds": torch.from_numpy(added[0]),
                                                             "time_ids": torch.from_numpy(added[1])}}
    with torch.no_grad():
        expected = nhwc(ref(nchw(x), t, encoder_hidden_states=torch.from_numpy(ctx), **kwargs).sample)
    got = model(mx.array(x), t, mx.array(ctx), added_cond=None if added is None else tuple(map(mx.array, added)))
    mx.eval(got)
    return np.array(got), expected


def _compare(tmp_path, config, latent_hw, seed=0, batch=2, t=999.0):
    ref = build_unet(config, seed=seed)
    ref.save_pretrained(tmp_path / "unet", safe_serialization=True)
    del ref
    ref = __import__("diffusers").UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    cfg, weights = convert_component(tmp_path / "unet")
    model = load_into(build_model(cfg), weights, "unet")
    return rel_l2(*_run(ref, model, *_inputs(cfg, latent_hw, seed, batch), t))


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


def test_sdxl_added_conditioning_matters(tmp_path):
    """A guard that SDXL's comparison can fail: other pooled embeddings or time ids change the output."""
    config = SMALL_UNETS["sdxl"]
    assert _compare(tmp_path, config, 8) <= 1e-4
    cfg, weights = convert_component(tmp_path / "unet")
    model = load_into(build_model(cfg), weights, "unet")
    x, ctx, (pooled, ids) = _inputs(cfg, 8, 0, 2)
    base = np.array(model(mx.array(x), 999.0, mx.array(ctx), added_cond=(mx.array(pooled), mx.array(ids))))
    for other in ((pooled + 1, ids), (pooled, ids * 0.5)):
        moved = np.array(model(mx.array(x), 999.0, mx.array(ctx), added_cond=tuple(map(mx.array, other))))
        assert rel_l2(moved, base) > 1e-3


@pytest.mark.slow
def test_full_size_sdxl_unet_matches_diffusers():
    """SDXL-Turbo's full-size UNet (2.6 G parameters, random weights) at 256x256 (32x32 latents). Its
    weights move from torch to mlx one tensor at a time, so that the two copies never coexist (10 GB each)."""
    import gc

    from mlx_musicviz.convert import keymaps

    config = read_reference_config("sdxl-turbo", "unet")
    ref = build_unet(config, seed=0)
    x, ctx, added = _inputs(config, 32, 0, 1)
    model = build_model({**config, "_class_name": "UNet2DConditionModel"})  # lazy: never materialized
    kwargs = {"added_cond_kwargs": {"text_embeds": torch.from_numpy(added[0]), "time_ids": torch.from_numpy(added[1])}}
    with torch.no_grad():
        expected = nhwc(ref(nchw(x), 999.0, encoder_hidden_states=torch.from_numpy(ctx), **kwargs).sample)
    weights = {}
    for name, p in ref.named_parameters():
        weights[name] = mx.array(p.detach().numpy())
        p.data = torch.empty(0)
    del ref, p
    gc.collect()
    model = load_into(model, keymaps.map_state_dict(weights, keymaps.unet_key), "unet")
    del weights
    got = model(mx.array(x), 999.0, mx.array(ctx), added_cond=tuple(map(mx.array, added)))
    err = rel_l2(np.array(got), expected)
    print(f"full-size sdxl-turbo UNet: relative L2 error {err:.2e}")
    assert err <= 1e-4, f"relative L2 error {err:.2e}"
