"""The one-step pipeline against diffusers' StableDiffusionPipeline(num_inference_steps=1, guidance_scale=0)."""

import warnings

import mlx.core as mx
import numpy as np
import pytest
import torch
from reference import nchw, rel_l2

from mlx_musicviz import load_pipeline

PROMPT = "a jazz trumpet in a neon-lit street, oil painting"


def diffusers_images(folder, latents_nhwc, prompt, vae_large=False, output_type="np", lora=None, scheduler=None,
                     **call):
    """The one-step pipeline's uint8 images (NHWC), or with output_type="latent" its latents (NHWC);
    with `lora`, that LoRA file loaded by `load_lora_weights`; `scheduler`: a diffusers scheduler class
    name replacing the checkpoint's (from its config); `call`: more arguments of the pipeline's call."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    if vae_large:
        pipe.vae = AutoencoderKL.from_pretrained(folder / "vae_large")
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    if scheduler is not None:
        import diffusers

        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        call = {"num_inference_steps": 1, **call}
        out = pipe([prompt] * latents_nhwc.shape[0], latents=nchw(latents_nhwc), height=latents_nhwc.shape[1] * 8,
                   width=latents_nhwc.shape[2] * 8, guidance_scale=0.0, output_type=output_type, **call).images
    if output_type == "latent":
        return out.numpy().transpose(0, 2, 3, 1)
    return (out * 255).round().astype(np.uint8)


def pixels_within(a, b, tol=1):
    return float(np.mean(np.abs(a.astype(int) - b.astype(int)) <= tol))


def test_prompt_embeddings_match(small_checkpoint):
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline(small_checkpoint["mlx"])
    ref = StableDiffusionPipeline.from_pretrained(small_checkpoint["diffusers"], safety_checker=None,
                                                  requires_safety_checker=False)
    with torch.no_grad():
        expected = ref.encode_prompt([PROMPT, "!!"], "cpu", 1, False)[0].numpy()
    got = np.array(pipe.encode_prompt([PROMPT, "!!"]))
    assert got.shape == expected.shape == (2, 77, 64)
    assert rel_l2(got, expected) <= 1e-4


@pytest.mark.parametrize("vae,shape", [("tiny", (2, 16, 16, 4)), ("large", (2, 16, 16, 4)),
                                       # frames wider than tall (render --size 192x128), and taller
                                       ("tiny", (1, 16, 24, 4)), ("large", (1, 24, 16, 4))])
def test_small_pipeline_matches_diffusers(small_checkpoint, vae, shape):
    pipe = load_pipeline(small_checkpoint["mlx"])
    assert pipe.scheduler.timestep == 999
    latents = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got = np.array(pipe.generate(mx.array(latents), pipe.encode_prompt([PROMPT]), vae=vae))
    expected = diffusers_images(small_checkpoint["diffusers"], latents, PROMPT, vae_large=vae == "large")
    assert got.shape == expected.shape and got.shape[0] == shape[0] and got.dtype == np.uint8
    assert got.shape[1] * shape[2] == got.shape[2] * shape[1]  # the latents' aspect (this large VAE scales by 2)
    frac = pixels_within(got, expected)
    assert frac >= 0.999, f"only {frac:.4%} of pixels within 1/255"
    assert got.std() > 5  # not a flat image


def test_load_pipeline_converts_a_diffusers_folder_once(small_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_MUSICVIZ_CACHE", str(tmp_path / "cache"))
    a = load_pipeline(small_checkpoint["diffusers"])
    b = load_pipeline(small_checkpoint["diffusers"])
    assert a.folder == b.folder and a.folder.parent.parent == tmp_path / "cache"
    assert len(list((tmp_path / "cache" / "converted").iterdir())) == 1


def test_small_sd_turbo_pipeline_matches_diffusers(tmp_path):
    """SD-Turbo's family (SD2.1 layout, its own KL VAE, the Euler scheduler at t = 999) at small widths,
    through text_to_image; "auto" decodes with the KL VAE, and asking for a tiny one is one clear error."""
    from reference import small_kl_checkpoint

    from mlx_musicviz.errors import MusicvizError
    from mlx_musicviz.models import SchedulerConfig
    from mlx_musicviz.scheduler import OneStepScheduler

    src, converted = small_kl_checkpoint(tmp_path, "sd21", "openclip", "!", "sd-turbo", seed=3)
    pipe = load_pipeline(converted)
    assert (pipe.scheduler.timestep, pipe.scheduler.alpha_prev) == (999, 1.0)  # Euler lands on sigma = 0
    assert pipe.vae_name() == "large"
    latents = np.random.default_rng(2).standard_normal((2, 16, 16, 4)).astype(np.float32)
    got = np.array(pipe.text_to_image(PROMPT, mx.array(latents)))
    expected = diffusers_images(src, latents, PROMPT)
    frac = pixels_within(got, expected)
    print(f"small SD-Turbo pipeline: {frac:.5%} of pixels within 1/255")
    assert got.shape == expected.shape and frac >= 0.999 and got.std() > 5
    # The denoised latents, where the scheduler shows (random weights hide it in pixels): SDXS's
    # PNDM step (unscaled noise, landing on alphas_cumprod[0]) instead of Euler's is far off.
    expected = diffusers_images(src, latents, PROMPT, output_type="latent")
    err = rel_l2(np.array(pipe.denoise(mx.array(latents), pipe.encode_prompt(PROMPT))), expected)
    pipe.scheduler = OneStepScheduler.from_config(SchedulerConfig())
    pndm = rel_l2(np.array(pipe.denoise(mx.array(latents), pipe.encode_prompt(PROMPT))), expected)
    print(f"denoised latents: relative L2 {err:.1e} (with PNDM's step: {pndm:.1e})")
    assert err <= 1e-5 < 1e-3 < pndm
    with pytest.raises(MusicvizError, match="has no tiny VAE"):
        pipe.decode(mx.array(latents), "tiny")


@pytest.mark.parametrize("scheduler,timestep,call", [("LCMScheduler", None, {}),
                                                     ("TCDScheduler", 800, {"timesteps": [800], "eta": 1.0})])
def test_one_step_lora_schedulers_match_diffusers(tmp_path, scheduler, timestep, call):
    """SD1.5's layout (OpenAI CLIP, KL VAE; dreamshaper's PNDM config) with LCM-LoRA's scheduler (one step
    at 999, the boundary condition) and Hyper-SD's (TCD at t = 800, eta 1), chosen by name: denoised
    latents and images against diffusers with the same scheduler and call."""
    from reference import small_kl_checkpoint

    src, converted = small_kl_checkpoint(tmp_path, "sd15", "openai", "<|endoftext|>", "sdxs-512-dreamshaper", seed=6)
    name = {"LCMScheduler": "lcm", "TCDScheduler": "tcd"}[scheduler] + (f":{timestep}" if timestep else "")
    pipe = load_pipeline(converted, scheduler=name)
    assert pipe.scheduler.timestep == (timestep or 999) and pipe.record["scheduler"]["class_name"] == scheduler
    latents = np.random.default_rng(4).standard_normal((2, 16, 16, 4)).astype(np.float32)
    expected = diffusers_images(src, latents, PROMPT, output_type="latent", scheduler=scheduler, **call)
    got = np.array(pipe.denoise(mx.array(latents), pipe.encode_prompt(PROMPT)))
    plain = np.array(load_pipeline(converted).denoise(mx.array(latents), pipe.encode_prompt(PROMPT)))
    err = rel_l2(got, expected)
    images = diffusers_images(src, latents, PROMPT, scheduler=scheduler, **call)
    frac = pixels_within(np.array(pipe.text_to_image(PROMPT, mx.array(latents))), images)
    print(f"{name}: denoised latents {err:.1e} (the checkpoint's own scheduler: {rel_l2(plain, expected):.1e}); "
          f"{frac:.4%} of pixels within 1/255")
    assert err <= 1e-5 and rel_l2(plain, expected) > 100 * err and frac >= 0.999


def test_lcm_in_several_steps_matches_diffusers(tmp_path, monkeypatch):
    """LCM-LoRA's sampling in 4 steps (timesteps 999, 759, 499, 259 from its 50-step grid): each step's output
    noised again to the next timestep, here with the frame's own starting noise. diffusers draws fresh noise
    there, so its draw is replaced by the same noise for the comparison."""
    import diffusers.schedulers.scheduling_lcm as lcm
    from reference import small_kl_checkpoint

    from mlx_musicviz.errors import MusicvizError

    src, converted = small_kl_checkpoint(tmp_path, "sd15", "openai", "<|endoftext|>", "sdxs-512-dreamshaper", seed=6)
    pipe = load_pipeline(converted, scheduler="lcm", steps=4)
    assert [s.timestep for s in pipe.scheduler_steps] == [999, 759, 499, 259]
    assert pipe.record["scheduler"] == {"class_name": "LCMScheduler", "timestep": 999, "steps": 4}
    latents = np.random.default_rng(8).standard_normal((2, 16, 16, 4)).astype(np.float32)
    monkeypatch.setattr(lcm, "randn_tensor", lambda shape, **kw: nchw(latents)[: shape[0]])
    expected = diffusers_images(src, latents, PROMPT, output_type="latent", scheduler="LCMScheduler",
                                num_inference_steps=4)
    got = np.array(pipe.denoise(mx.array(latents), pipe.encode_prompt(PROMPT)))
    one = np.array(load_pipeline(converted, scheduler="lcm").denoise(mx.array(latents), pipe.encode_prompt(PROMPT)))
    frac = pixels_within(np.array(pipe.text_to_image(PROMPT, mx.array(latents))),
                         diffusers_images(src, latents, PROMPT, scheduler="LCMScheduler", num_inference_steps=4))
    err = rel_l2(got, expected)
    print(f"LCM in 4 steps: denoised latents {err:.1e} (in one step: {rel_l2(one, expected):.1e}); "
          f"{frac:.4%} of pixels within 1/255")
    assert err <= 1e-5 and rel_l2(one, expected) > 100 * err and frac >= 0.999
    for scheduler, steps, needle in ((None, 4, "takes one step"), ("tcd", 2, "TCDScheduler takes one step"),
                                     ("lcm:800", 2, "either a timestep"), ("lcm", 9, "from 1 to 8"),
                                     ("lcm", "4", "whole number")):
        with pytest.raises(MusicvizError, match=needle):
            load_pipeline(converted, scheduler=scheduler, steps=steps)


@pytest.mark.parametrize("steps", [2, 4])
def test_sd_turbo_euler_in_several_steps_matches_diffusers(tmp_path, steps):
    """SD-Turbo's own Euler scheduler in 2 and 4 steps (trailing timesteps 999, 499 / 999, 749, 499, 249),
    with the model's scheduler (no --scheduler): denoised latents and images against diffusers."""
    from reference import small_kl_checkpoint

    src, converted = small_kl_checkpoint(tmp_path, "sd21", "openclip", "!", "sd-turbo", seed=3)
    pipe = load_pipeline(converted, steps=steps)
    assert [s.timestep for s in pipe.scheduler_steps] == {2: [999, 499], 4: [999, 749, 499, 249]}[steps]
    assert pipe.record["scheduler"] == {"class_name": "EulerDiscreteScheduler", "timestep": 999, "steps": steps}
    latents = np.random.default_rng(9).standard_normal((2, 16, 16, 4)).astype(np.float32)
    expected = diffusers_images(src, latents, PROMPT, output_type="latent", num_inference_steps=steps)
    err = rel_l2(np.array(pipe.denoise(mx.array(latents), pipe.encode_prompt(PROMPT))), expected)
    one = rel_l2(np.array(load_pipeline(converted).denoise(mx.array(latents), pipe.encode_prompt(PROMPT))), expected)
    frac = pixels_within(np.array(pipe.text_to_image(PROMPT, mx.array(latents))),
                         diffusers_images(src, latents, PROMPT, num_inference_steps=steps))
    print(f"SD-Turbo Euler in {steps} steps: denoised latents {err:.1e} (in one step: {one:.1e}); "
          f"{frac:.4%} of pixels within 1/255")
    assert err <= 1e-5 and one > 100 * err and frac >= 0.999


def test_sdxl_turbo_euler_ancestral_in_several_steps_matches_diffusers(tmp_path, monkeypatch):
    """SDXL-Turbo's Euler ancestral scheduler in 3 steps (999, 666, 332): each step lands on x0 + σ_down ε
    + σ_up n, with n the frame's own noise here; diffusers draws n afresh, so its draw is replaced by the
    same noise for the comparison."""
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ancestral
    from reference import small_sdxl_checkpoint

    from mlx_musicviz.errors import MusicvizError

    src, converted = small_sdxl_checkpoint(tmp_path, seed=7)
    pipe = load_pipeline(converted, scheduler="euler_a", steps=3)
    assert [s.timestep for s in pipe.scheduler_steps] == [999, 666, 332]
    assert 0 < pipe.scheduler_steps[0].renoise < 1 and pipe.scheduler_steps[-1].alpha_prev == 1.0
    latents = np.random.default_rng(5).standard_normal((2, 16, 24, 4)).astype(np.float32)
    monkeypatch.setattr(ancestral, "randn_tensor", lambda shape, **kw: nchw(latents)[: shape[0]])
    from diffusers import StableDiffusionXLPipeline

    ref = StableDiffusionXLPipeline.from_pretrained(src)
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        expected = ref([PROMPT] * 2, latents=nchw(latents), num_inference_steps=3, height=128, width=192,
                       guidance_scale=0.0, output_type="latent").images.numpy().transpose(0, 2, 3, 1)
    err = rel_l2(np.array(pipe.denoise(mx.array(latents), pipe.encode_prompt(PROMPT))), expected)
    deterministic = rel_l2(np.array(load_pipeline(converted, scheduler="euler", steps=3).denoise(
        mx.array(latents), pipe.encode_prompt(PROMPT))), expected)
    print(f"SDXL-Turbo Euler ancestral in 3 steps: denoised latents {err:.1e} (Euler's: {deterministic:.1e})")
    assert err <= 1e-5 and deterministic > 100 * err
    for scheduler, steps, needle in (("tcd", 2, "TCDScheduler takes one step"), ("euler:500", 2, "either a timestep")):
        with pytest.raises(MusicvizError, match=needle):
            load_pipeline(converted, scheduler=scheduler, steps=steps)
    with pytest.raises(MusicvizError, match="PNDMScheduler takes one step"):
        load_pipeline("random:tiny", steps=2)


@pytest.mark.slow
def test_compiled_calls_equal_uncompiled_ones():
    """`Pipeline.compiled` (mx.compile, for the GPU; traced through mlx's own operations): denoised latents
    and images equal the uncompiled calls through the same operations, and the CPU's fast paths within
    float rounding; a new scheduler (or LoRA, or quantization) traces again. The first trace on a fresh
    machine compiles the CPU backend's kernels (about a minute); later runs load them."""
    from mlx_musicviz.ops.device import differentiable

    for name, shape in (("random:tiny", (2, 8, 8, 4)), ("random:tiny-sdxl", (1, 8, 16, 4))):
        pipe = load_pipeline(name)
        latents = mx.random.normal(shape, key=mx.random.key(0))
        embeds = pipe.encode_prompt("a lighthouse")
        fast = np.array(pipe.denoise(latents, embeds))
        with differentiable():
            plain, plain_images = np.array(pipe.denoise(latents, embeds)), np.array(pipe.generate(latents, embeds))
        pipe.compiled = True
        got, images = np.array(pipe.denoise(latents, embeds)), np.array(pipe.generate(latents, embeds))
        assert rel_l2(got, plain) <= 1e-6 and rel_l2(got, fast) <= 1e-5, name
        assert np.abs(images.astype(int) - plain_images.astype(int)).max() <= 1, name
        pipe.set_scheduler("lcm", steps=2)
        with differentiable():
            pipe.compiled = False
            lcm = np.array(pipe.denoise(latents, embeds))
        pipe.compiled = True
        assert rel_l2(np.array(pipe.denoise(latents, embeds)), lcm) <= 1e-6 and rel_l2(lcm, plain) > 1e-2, name


@pytest.mark.slow
def test_full_size_sdxs09_pipeline_matches_diffusers(tmp_path):
    """sdxs-512-0.9's full architecture (random weights) at 512x512."""
    from reference import (
        build_text_encoder,
        build_tiny_vae,
        build_unet,
        read_reference_config,
        save_diffusers_checkpoint,
    )

    from mlx_musicviz.convert import convert_checkpoint

    te_cfg = {k: v for k, v in read_reference_config("sdxs-512-0.9", "text_encoder").items()
              if k not in ("architectures", "model_type", "transformers_version", "vocab_size",
                           "max_position_embeddings")}
    src = save_diffusers_checkpoint(
        tmp_path / "diffusers", build_unet(read_reference_config("sdxs-512-0.9", "unet"), seed=11),
        build_text_encoder(te_cfg, seed=12), build_tiny_vae(read_reference_config("sdxs-512-0.9", "vae"), seed=13),
        "!")
    pipe = load_pipeline(convert_checkpoint(src, tmp_path / "mlx"))
    latents = np.random.default_rng(1).standard_normal((1, 64, 64, 4)).astype(np.float32)
    got = np.array(pipe.generate(mx.array(latents), pipe.encode_prompt([PROMPT])))
    expected = diffusers_images(src, latents, PROMPT)
    frac = pixels_within(got, expected)
    print(f"full-size sdxs-512-0.9 pipeline: {frac:.5%} of pixels within 1/255")
    assert frac >= 0.999


@pytest.mark.parametrize("name", ["tiny", "sdxs-512-0.9", "sdxs-512-dreamshaper"])
def test_random_models_carry_a_large_vae_built_when_first_used(name):
    """`random:NAME --vae large` works with no download: the large VAE (SD's layout for the SDXS
    names, as diffusers builds it) is built on first use, with the same weights every time."""
    from diffusers import AutoencoderKL

    from mlx_musicviz.pipeline import Pipeline
    from mlx_musicviz.random_models import random_configs

    config = {k: v for k, v in random_configs(name)[0]["vae_large"].items() if not k.startswith("_")}
    assert AutoencoderKL.from_config(config).config.block_out_channels[-1] == config["block_out_channels"][-1]
    if name != "tiny":
        assert config["block_out_channels"] == [128, 256, 512, 512] and config["layers_per_block"] == 2
        return
    pipe = Pipeline.random(name)
    assert "vae_large" not in pipe.weight_bytes()  # not built yet
    latents = mx.random.normal((1, 8, 8, 4), key=mx.random.key(0))
    images = pipe.decode(latents, "large")
    assert images.shape == (1, 64, 64, 3) and pipe.weight_bytes()["vae_large"] > 0
    assert mx.array_equal(images, Pipeline.random(name).decode(latents, "large"))



def test_half_precision_on_the_cpu_warns_that_it_is_slower():
    """mlx's CPU has no half-precision BLAS: asking for float16 or bfloat16 compute there says so."""
    with mx.stream(mx.cpu):
        for dtype in (mx.float16, mx.bfloat16):
            with pytest.warns(UserWarning, match="no half-precision BLAS"):
                pipe = load_pipeline("random:tiny", dtype=dtype)
            assert pipe.unet.conv_in.weight.dtype == dtype
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_pipeline("random:tiny")


def test_bad_shapes_and_dtypes_are_named_before_the_model_runs():
    """mlx's own errors for these name a convolution or a concatenation deep inside the UNet."""
    from mlx_musicviz.errors import MusicvizError

    pipe = load_pipeline("random:tiny")
    emb = pipe.encode_prompt("x")
    for latents in (mx.zeros((8, 8, 4)), mx.zeros((1, 8, 8, 3)), mx.zeros((1, 7, 9, 4)), mx.zeros((0, 8, 8, 4))):
        for call in (pipe.generate, pipe.denoise):
            with pytest.raises(MusicvizError, match=r"latents must be \(N, h, w, 4\) with h and w multiples of 8"):
                call(latents, emb)
    for embeds in (emb[0], emb[..., :-1], mx.concatenate([emb, emb, emb])):
        for call in (pipe.generate, pipe.denoise):
            with pytest.raises(MusicvizError, match="prompt_embeds must be|3 prompt embeddings for 2 latents"):
                call(mx.zeros((2, 8, 16, 4)), embeds)
    assert pipe.generate(mx.zeros((2, 8, 16, 4)), emb).shape == (2, 64, 128, 3)  # batch-1 embeddings are shared
    with pytest.raises(MusicvizError, match="no prompts"):
        pipe.encode_prompt([])
    for prompts in (None, 3, [None], ["a", 5]):
        with pytest.raises(MusicvizError, match="a prompt is a string, or a list of strings"):
            pipe.encode_prompt(prompts)
    with pytest.raises(MusicvizError, match="2 prompts for 1 latents"):
        pipe.text_to_image(["a", "b"], mx.zeros((1, 8, 8, 4)))
    # SDXL: the pooled row is part of the embeddings; diffusers' two arrays join into them
    xl = load_pipeline("random:tiny-sdxl")
    emb = xl.encode_prompt(["x", "y"])
    tokens, pooled = xl.split_prompt_embeds(emb)
    assert mx.array_equal(xl.join_prompt_embeds(tokens, pooled), emb).item()
    for bad in (emb[:, :77], emb[..., :64], "x"):
        with pytest.raises(MusicvizError, match=r"prompt_embeds must be"):
            xl.generate(mx.zeros((2, 8, 8, 4)), bad) if isinstance(bad, mx.array) else xl.split_prompt_embeds(bad)
    with pytest.raises(MusicvizError, match=r"must be \(N, 77, 128\) and pooled_prompt_embeds \(N, 32\)"):
        xl.join_prompt_embeds(tokens, pooled[:, :8])
    with pytest.raises(MusicvizError, match="join_prompt_embeds is for SDXL"):
        pipe.join_prompt_embeds(tokens, pooled)
    with pytest.raises(MusicvizError, match="dtype must be"):
        load_pipeline("random:tiny", dtype=mx.int32)


def sdxl_images(folder, latents_nhwc, prompt, output_type="np", lora=None):
    """diffusers' StableDiffusionXLPipeline(num_inference_steps=1, guidance_scale=0): uint8 NHWC images,
    or with output_type="latent" the denoised latents (NHWC); with `lora`, that file loaded by
    `load_lora_weights`."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = pipe([prompt] * latents_nhwc.shape[0], latents=nchw(latents_nhwc), num_inference_steps=1,
                   height=latents_nhwc.shape[1] * 8, width=latents_nhwc.shape[2] * 8, guidance_scale=0.0,
                   output_type=output_type).images
    if output_type == "latent":
        return out.numpy().transpose(0, 2, 3, 1)
    return (out * 255).round().astype(np.uint8)


def test_small_sdxl_pipeline_matches_diffusers(tmp_path):
    """SDXL-Turbo's family at small widths: both text encoders (penultimate hidden states side by side, the
    pooled projection), the UNet's text_time conditioning (time ids of the image size), Euler ancestral's
    one step, the KL VAE; embeddings, denoised latents and images against diffusers."""
    from diffusers import StableDiffusionXLPipeline
    from reference import small_sdxl_checkpoint

    from mlx_musicviz.walkers import PromptWalkConfig, mix_embeddings

    src, converted = small_sdxl_checkpoint(tmp_path, seed=7)
    pipe = load_pipeline(converted)
    assert (pipe.scheduler.timestep, pipe.scheduler.alpha_prev, pipe.vae_name()) == (999, 1.0, "large")
    ref = StableDiffusionXLPipeline.from_pretrained(src)
    with torch.no_grad():
        tokens, _, pooled, _ = ref.encode_prompt([PROMPT, "!!"], device="cpu", num_images_per_prompt=1,
                                                 do_classifier_free_guidance=False)
    embeds = pipe.encode_prompt([PROMPT, "!!"])
    got_tokens, got_pooled = pipe.split_prompt_embeds(embeds)
    assert embeds.shape == (2, 78, 112) and got_pooled.shape == (2, 32)
    assert rel_l2(np.array(got_tokens), tokens.numpy()) <= 1e-4 and rel_l2(np.array(got_pooled), pooled.numpy()) <= 1e-4
    # The prompt walk mixes rows: the pooled row's padding stays zero, so its mix is the pooled one's.
    walked = mix_embeddings(embeds[:1], mx.concatenate([embeds[1:]] * 12), np.full((1, 12), 0.05), PromptWalkConfig())
    assert float(mx.abs(walked[:, -1, 32:]).max()) == 0.0

    latents = np.random.default_rng(5).standard_normal((2, 16, 24, 4)).astype(np.float32)
    expected = sdxl_images(src, latents, PROMPT, output_type="latent")
    embeds = pipe.encode_prompt(PROMPT)
    err = rel_l2(np.array(pipe.denoise(mx.array(latents), embeds)), expected)
    no_pooled = mx.concatenate([embeds[:, :-1], mx.zeros_like(embeds[:, -1:])], axis=1)
    off = rel_l2(np.array(pipe.denoise(mx.array(latents), no_pooled)), expected)
    frac = pixels_within(np.array(pipe.text_to_image(PROMPT, mx.array(latents))), sdxl_images(src, latents, PROMPT))
    print(f"small SDXL pipeline: denoised latents {err:.1e} (without the pooled embedding {off:.1e}); "
          f"{frac:.4%} of pixels within 1/255")
    assert err <= 1e-5 and off > 100 * err and frac >= 0.999


def test_sdxl_vae_decodes_in_float32(tmp_path):
    """SDXL's VAE overflows in float16 (its config says force_upcast): it stays float32 in a float16 pipeline."""
    from reference import small_sdxl_checkpoint

    _, converted = small_sdxl_checkpoint(tmp_path, seed=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float16 on the CPU
        pipe = load_pipeline(converted, dtype=mx.float16)
    assert pipe.unet.conv_in.weight.dtype == mx.float16 and pipe.vae.decoder.conv_in.weight.dtype == mx.float32
    image = pipe.text_to_image(PROMPT, mx.random.normal((1, 8, 8, 4), key=mx.random.key(0)))
    assert image.dtype == mx.uint8 and image.shape == (1, 64, 64, 3)


def test_a_tiny_vae_added_to_a_kl_model_matches_diffusers(tmp_path):
    """`convert --tiny-vae`: an AutoencoderTiny (a diffusers folder, as madebyollin/taesd is) beside SD-Turbo's
    KL VAE; "auto" then decodes with it, as diffusers' pipeline given that VAE does, and a conversion of the
    converted checkpoint keeps it."""
    from diffusers import AutoencoderTiny, StableDiffusionPipeline
    from reference import build_tiny_vae, small_kl_checkpoint

    from mlx_musicviz.convert import convert_checkpoint, read_record

    src, converted = small_kl_checkpoint(tmp_path, "sd21", "openclip", "!", "sd-turbo", seed=11)
    build_tiny_vae(seed=12).save_pretrained(tmp_path / "taesd", safe_serialization=True)
    pipe = load_pipeline(convert_checkpoint(converted, tmp_path / "with-tiny", tiny_vae=tmp_path / "taesd"))
    assert pipe.vae_name() == "tiny" and pipe.record["tiny_vae"]["source"] == str((tmp_path / "taesd").resolve())
    ref = StableDiffusionPipeline.from_pretrained(src, vae=AutoencoderTiny.from_pretrained(tmp_path / "taesd"),
                                                  safety_checker=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    latents = np.random.default_rng(6).standard_normal((1, 16, 16, 4)).astype(np.float32)
    with torch.no_grad():
        image = ref([PROMPT], latents=nchw(latents), num_inference_steps=1, height=128, width=128, guidance_scale=0.0,
                    output_type="np").images
    got = np.array(pipe.text_to_image(PROMPT, mx.array(latents)))
    frac = pixels_within(got, (image * 255).round().astype(np.uint8))
    print(f"SD-Turbo layout with a tiny VAE: {frac:.4%} of pixels within 1/255")
    assert got.shape == (1, 128, 128, 3) and frac >= 0.999 and got.std() > 5
    large = np.array(pipe.generate(mx.array(latents), pipe.encode_prompt(PROMPT), vae="large"))
    assert large.shape == (1, 32, 32, 3)  # the KL VAE stays (this small one scales by 2)
    again = convert_checkpoint(tmp_path / "with-tiny", tmp_path / "again", bits=8)
    assert read_record(again)["tiny_vae"] == pipe.record["tiny_vae"] and "vae_tiny" not in read_record(again)["quantization"]
    assert np.mean(np.abs(np.array(load_pipeline(again).text_to_image(PROMPT, mx.array(latents)), int) - got)) < 3
