"""train-lora: LoRA gradients against PyTorch + peft, the loss going down on real mel tiles, the file in
diffusers and here, resuming after an interruption, and bad input in one line."""

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from reference import nchw, rel_l2
from render_helpers import error_lines, run_cli

from mlx_musicviz import load_pipeline
from mlx_musicviz.training import TARGETS, add_lora, denoising_loss, train_lora

PROMPT = "a mel spectrogram of a string orchestra"
pytestmark = pytest.mark.filterwarnings("ignore:random weights")  # random:tiny is the model of several tests


def _peft_unet(small_checkpoint, rank: int, seed: int):
    """The small checkpoint's diffusers UNet with a peft adapter on TARGETS, A and B both random."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(small_checkpoint["diffusers"] / "unet").eval()
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(TARGETS)))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * (0.3 if "lora_A" in name else 0.05))
    return unet


def _mlx_name(peft_name: str) -> str:
    return peft_name.replace(".default.weight", "")  # ...to_q.lora_A.default.weight -> ...to_q.lora_A


def _gradients(checkpoint: dict, layer_count: int):
    """The same small UNet, LoRA (rank 4, random A and B), batch, timesteps and noise (and for SDXL pooled
    embeddings and time ids): (MLX loss, PyTorch loss, {matrix: relative L2 of its gradient}, MLX gradients),
    the noised latents made by diffusers' DDPMScheduler."""
    from diffusers import DDPMScheduler
    from mlx.utils import tree_flatten, tree_unflatten

    from mlx_musicviz.ops import differentiable
    from mlx_musicviz.scheduler import alphas_cumprod

    ref = _peft_unet(checkpoint, 4, 0)
    pipe = load_pipeline(checkpoint["mlx"])
    layers = add_lora(pipe.unet, 4)
    lora = {_mlx_name(n): p for n, p in ref.named_parameters() if "lora_" in n}
    assert len(layers) * 2 == len(lora) == layer_count * 2
    pipe.unet.update(tree_unflatten([(k, mx.array(v.detach().numpy())) for k, v in lora.items()]))

    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((2, 16, 16, 4)).astype(np.float32)
    eps = rng.standard_normal((2, 16, 16, 4)).astype(np.float32)
    emb = rng.standard_normal((2, 77, pipe.unet.config.cross_attention_dim)).astype(np.float32)
    t = np.array([30, 870])
    added = None
    if pipe.text_encoder_2 is not None:
        added = (rng.standard_normal((2, pipe.text_encoder_2.config.projection_dim)).astype(np.float32),
                 np.array([[128, 128, 0, 0, 128, 128]] * 2, np.float32))
    scheduler = DDPMScheduler.from_config({k: v for k, v in pipe.scheduler.config.to_dict().items() if k != "class_name"})
    noisy = scheduler.add_noise(nchw(x0), nchw(eps), torch.from_numpy(t))
    kwargs = {} if added is None else {"added_cond_kwargs": {"text_embeds": torch.from_numpy(added[0]),
                                                             "time_ids": torch.from_numpy(added[1])}}
    out = ref(noisy, torch.from_numpy(t), torch.from_numpy(emb), **kwargs).sample
    loss_ref = torch.nn.functional.mse_loss(out, nchw(eps))
    loss_ref.backward()

    ac = mx.array(alphas_cumprod(pipe.scheduler.config))
    cond = None if added is None else tuple(map(mx.array, added))
    with differentiable():
        import mlx.nn as nn

        loss, grads = nn.value_and_grad(pipe.unet, lambda *a: denoising_loss(pipe.unet, *a, ac, added_cond=cond))(
            mx.array(x0), mx.array(eps), mx.array(t), mx.array(emb))
    grads = dict(tree_flatten(grads))
    return loss, loss_ref, {k: rel_l2(np.array(grads[k]), p.grad.numpy()) for k, p in lora.items()}, grads


def test_one_steps_lora_gradients_match_peft(small_checkpoint):
    """The loss and every LoRA matrix's gradient against PyTorch + peft (see `_gradients`)."""
    loss, loss_ref, errors, grads = _gradients(small_checkpoint, 72)  # 72 attention projections
    assert abs(loss.item() / loss_ref.item() - 1) < 1e-5
    worst = max(errors, key=errors.get)
    print(f"loss {loss.item():.6f} (PyTorch {loss_ref.item():.6f}); LoRA gradients: worst relative L2 "
          f"{errors[worst]:.1e} ({worst}), median {np.median(list(errors.values())):.1e}")
    assert errors[worst] <= 1e-4
    assert min(np.linalg.norm(np.array(g)) for g in grads.values()) > 0  # every matrix learns


def test_sdxl_lora_gradients_match_peft(tmp_path):
    """SDXL's layout: the same with its added conditioning (pooled embeddings and time ids) in the loss."""
    from reference import small_sdxl_checkpoint

    src, converted = small_sdxl_checkpoint(tmp_path, seed=33)
    loss, loss_ref, errors, _ = _gradients({"diffusers": src, "mlx": converted}, 136)
    print(f"SDXL: loss {loss.item():.6f} (PyTorch {loss_ref.item():.6f}); worst gradient {max(errors.values()):.1e}")
    assert abs(loss.item() / loss_ref.item() - 1) < 1e-5 and max(errors.values()) <= 1e-4


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    """Four real mel tiles (default preset) of the orchestra recording."""
    from reference import DATA

    from mlx_musicviz.spectrogram import PRESETS, folder_to_images

    folder = tmp_path_factory.mktemp("tiles")
    song = DATA / "audio" / "Hungarian_Dance_number_5_-_Allegro_in_F_sharp_minor_(string_orchestra).ogg"
    written, _ = folder_to_images(song, folder, PRESETS["default"])
    for extra in sorted(written)[4:]:
        extra.unlink()
    assert len(list(folder.glob("*.png"))) == 4
    return folder


def _fixed_loss(pipe, tiles_folder, resolution) -> float:
    """The denoising loss over every tile at 8 fixed timesteps with fixed noise (lower: the model fits them)."""
    from mlx_musicviz.ops import differentiable
    from mlx_musicviz.scheduler import alphas_cumprod
    from mlx_musicviz.training import find_images, load_images

    pixels = load_images(find_images(tiles_folder), resolution)
    with differentiable():
        x0 = pipe.vae.encode(mx.array(pixels))
        emb = mx.broadcast_to(pipe.encode_prompt(PROMPT), (len(pixels), 77, pipe.unet.config.cross_attention_dim))
        ac = mx.array(alphas_cumprod(pipe.scheduler.config))
        rng = np.random.default_rng(123)
        total = 0.0
        for t in np.linspace(50, 950, 8).astype(int):
            eps = mx.array(rng.standard_normal(x0.shape).astype(np.float32))
            total += denoising_loss(pipe.unet, x0, eps, mx.array([int(t)] * len(pixels)), emb, ac).item()
    return total / 8


def test_training_on_real_tiles_lowers_the_loss(tiles, tmp_path):
    """200 steps of rank 8 on 4 mel tiles (random:tiny at 64²): the loss at fixed timesteps and noise
    falls by a stated factor, and the file holds the 72 layers' matrices in diffusers/PEFT names."""
    pipe = load_pipeline("random:tiny")
    before = _fixed_loss(pipe, tiles, 64)
    result = train_lora(tiles, tmp_path / "tiles.safetensors", prompt=PROMPT, rank=8, steps=200, learning_rate=3e-3,
                        resolution=64, batch_size=2, pipeline=pipe)
    after = _fixed_loss(pipe, tiles, 64)
    print(f"fixed-noise loss {before:.4f} -> {after:.4f} (x{after / before:.3f}) after 200 steps, {result.seconds:.0f} s")
    assert after < 0.8 * before
    weights, meta = mx.load(str(result.output), return_metadata=True)
    assert len(weights) == 2 * 72 and all(k.startswith("unet.") and k.endswith(("lora_A.weight", "lora_B.weight"))
                                          for k in weights)
    assert json.loads(meta["musicviz-train"])["steps"] == 200
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # the checkpoint folder is gone


@pytest.mark.parametrize("family", ["sdxs", "sd-turbo", "sdxl"])
def test_the_file_loads_in_diffusers_and_here_and_changes_the_image(small_checkpoint, tiles, tmp_path, family):
    """A LoRA trained on a small checkpoint (SDXS's layout, images encoded by its tiny VAE; SD-Turbo's,
    by its KL VAE's encoder; SDXL's, conditioned on both text encoders and the pooled embedding), loaded
    by diffusers' load_lora_weights and by --lora: the same image (within 1/255), different from the
    model's without it."""
    from reference import small_kl_checkpoint, small_sdxl_checkpoint
    from test_pipeline import diffusers_images, pixels_within, sdxl_images

    if family == "sdxs":
        src, converted = small_checkpoint["diffusers"], small_checkpoint["mlx"]
    elif family == "sdxl":
        src, converted = small_sdxl_checkpoint(tmp_path, seed=31)
        diffusers_images = sdxl_images  # noqa: F811 - SDXL's pipeline
    else:
        src, converted = small_kl_checkpoint(tmp_path, "sd21", "openclip", "!", "sd-turbo", seed=30)
    lora = train_lora(tiles, tmp_path / "small.safetensors", converted, prompt=PROMPT, rank=4,
                      steps=30, learning_rate=2e-2, resolution=64).output
    latents = np.random.default_rng(5).standard_normal((1, 16, 16, 4)).astype(np.float32)
    plain = np.array(load_pipeline(converted).text_to_image(PROMPT, mx.array(latents)))
    ours = np.array(load_pipeline(converted, loras=[lora]).text_to_image(PROMPT, mx.array(latents)))
    theirs = diffusers_images(src, latents, PROMPT, lora=lora)
    changed = 1 - pixels_within(ours, plain)
    print(f"with the LoRA: {pixels_within(ours, theirs):.4%} of pixels within 1/255 of diffusers'; "
          f"{changed:.1%} of pixels changed by it")
    assert pixels_within(ours, theirs) >= 0.999 and changed > 0.2


def test_an_interrupted_run_resumes_to_the_same_lora(tiles, tmp_path):
    """Stopped at step 11 with checkpoints every 4 steps, the same call resumes at step 8 and ends with
    exactly the LoRA of a run never stopped; the stop's message says where the state is."""
    out = tmp_path / "a.safetensors"
    kwargs = dict(prompt=PROMPT, rank=4, steps=16, learning_rate=1e-3, resolution=64, save_every=4)

    def stop_at_11(step, total, loss):
        if step == 11:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as stopped:
        train_lora(tiles, out, "random:tiny", progress=stop_at_11, **kwargs)
    assert "state at step 8 of 16 is kept" in " ".join(stopped.value.__notes__) and not out.exists()
    resumed = train_lora(tiles, out, "random:tiny", **kwargs)
    assert (resumed.resumed_from, resumed.steps) == (8, 8)
    whole = train_lora(tiles, tmp_path / "b.safetensors", "random:tiny", **kwargs)
    a, b = mx.load(str(out)), mx.load(str(whole.output))
    assert a.keys() == b.keys() and all(np.array_equal(np.array(a[k]), np.array(b[k])) for k in a)
    # a state kept for other settings is not used, and says so; one kept for fewer steps goes on
    with pytest.raises(KeyboardInterrupt):
        train_lora(tiles, out, "random:tiny", progress=stop_at_11, **kwargs)
    with pytest.warns(UserWarning, match="is of other images, captions, model or settings: starting over"):
        with pytest.raises(KeyboardInterrupt):
            train_lora(tiles, out, "random:tiny", progress=stop_at_11, **{**kwargs, "learning_rate": 2e-3})
    longer = train_lora(tiles, out, "random:tiny", **{**kwargs, "learning_rate": 2e-3, "steps": 20})
    assert (longer.resumed_from, longer.steps) == (8, 12)


def test_bad_input_is_one_line(tiles, tmp_path):
    from PIL import Image

    from mlx_musicviz.spectrogram import PRESETS, folder_to_images

    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tile.png").write_bytes(b"not a png")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.open(sorted(tiles.glob("*.png"))[0]).save(mixed / "a.png", pnginfo=_pnginfo(sorted(tiles.glob("*.png"))[0]))
    from reference import DATA

    written, _ = folder_to_images(DATA / "audio" / "sorohanro_-_solo-trumpet-06.ogg", tmp_path / "riff",
                                  PRESETS["riffusion"])
    written[0].rename(mixed / "b.png")
    out = str(tmp_path / "x.safetensors")
    base = ["train-lora", "--model", "random:tiny", "--resolution", "64", "--steps", "2", "-o", out]
    cases = [
        ([str(empty), "-p", "x"], "holds no images"),
        ([str(tmp_path / "nowhere"), "-p", "x"], "does not exist"),
        ([str(broken), "-p", "x"], "is not a readable image"),
        ([str(mixed), "-p", "x"], "tiles of mixed presets"),
        ([str(tiles), "-p", "x", "--rank", "0"], "rank must be a whole number from 1"),
        ([str(tiles)], "give a prompt for every image or a captions file"),
        ([str(tiles), "--captions", str(tmp_path / "none.json")], "missing file"),
        ([str(tiles), "-p", "x", "--resolution", "100"], "multiple of 64"),
        ([str(tiles), "-p", "x", "-o", str(tmp_path)], "such as " + str(tmp_path / "lora.safetensors")),
        ([str(tiles), "-p", "x", "-o", str(tmp_path / "x.txt")], "as .safetensors"),
    ]
    for args, message in cases:
        result = run_cli(*base, *args)
        lines = error_lines(result)
        assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], (args, result.stderr[-500:])
    assert not (tmp_path / "x.safetensors").exists()


def test_a_kl_model_converted_without_its_encoder_is_one_line(tiles, tmp_path):
    from reference import small_kl_checkpoint

    from mlx_musicviz.checkpoint_format import ENCODER_NAME
    from mlx_musicviz.convert import convert_checkpoint
    from mlx_musicviz.errors import MusicvizError

    _, converted = small_kl_checkpoint(tmp_path, "sd21", "openclip", "!", "sd-turbo", seed=40)
    assert (converted / "vae" / ENCODER_NAME).exists()  # kept by convert, from diffusers and from MLX checkpoints
    assert (convert_checkpoint(converted, tmp_path / "again", bits=8) / "vae" / ENCODER_NAME).exists()
    (converted / "vae" / ENCODER_NAME).unlink()
    with pytest.raises(MusicvizError, match="converted by an older version; convert it again"):
        train_lora(tiles, tmp_path / "x.safetensors", converted, prompt=PROMPT, steps=1, resolution=64)


def _pnginfo(path):
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in Image.open(path).text.items():
        info.add_text(key, value)
    return info
