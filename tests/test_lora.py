"""LoRA files (diffusers/PEFT and kohya formats) fused into the UNet and text encoder, against diffusers'
`load_lora_weights` + `fuse_lora(lora_scale=s)` on the same random LoRA; files that do not fit."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from reference import nchw, rel_l2
from safetensors import safe_open

from mlx_musicviz import load_pipeline
from mlx_musicviz.errors import MusicvizError
from mlx_musicviz.lora import parse_lora

PROMPT = "a jazz trumpet in a neon-lit street, oil painting"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "time_emb_proj"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
LAYERS = {"unet": 135, "text_encoder": 12}  # the small checkpoint's layers these targets name


def _random_adapter(model, config, seed: int, size: float):
    """Add `config`'s adapter to `model` with random A (unit-variance outputs) and B (entries of `size`)."""
    from peft.utils import get_peft_model_state_dict

    model.add_adapter(config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name:
                param.copy_(torch.randn_like(param) / np.sqrt(np.prod(param.shape[1:])))
            elif "lora_B" in name:
                param.copy_(torch.randn_like(param) * size)
    return get_peft_model_state_dict(model)


@pytest.fixture(scope="module")
def lora_files(small_checkpoint, tmp_path_factory):
    """A random LoRA of the small checkpoint's UNet (rank 4, alpha 8, attention, feed-forward and
    convolutions) and text encoder (rank 2, alpha 2), in diffusers' format (saved by diffusers) and in
    kohya's (the same tensors renamed, alphas as tensors)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("lora")
    pipe = StableDiffusionPipeline.from_pretrained(small_checkpoint["diffusers"], safety_checker=None,
                                                   requires_safety_checker=False)
    unet_config = LoraConfig(r=4, lora_alpha=8, target_modules=UNET_TARGETS)
    text_config = LoraConfig(r=2, lora_alpha=2, target_modules=TEXT_TARGETS)
    unet = _random_adapter(pipe.unet, unet_config, 5, 0.05)  # PEFT's names: lora_A, lora_B
    # diffusers' names for a text encoder's layers: lora_linear_layer.down, .up
    text = convert_state_dict_to_diffusers(_random_adapter(pipe.text_encoder, text_config, 6, 0.05))
    StableDiffusionPipeline.save_lora_weights(folder / "diffusers", unet_lora_layers=unet, text_encoder_lora_layers=text,
                                              unet_lora_adapter_metadata=unet_config.to_dict(),
                                              text_encoder_lora_adapter_metadata=text_config.to_dict())
    diffusers_file = folder / "diffusers" / "pytorch_lora_weights.safetensors"
    kohya = {}
    with safe_open(str(diffusers_file), framework="numpy") as f:
        for key in f.keys():
            component, rest = key.split(".", 1)
            module, kind = rest.rsplit(".lora_", 1) if ".lora_" in rest else rest.rsplit(".lora.", 1)
            module = module.removesuffix(".lora_linear_layer").removeprefix("text_model.")
            prefix = "lora_unet_" if component == "unet" else "lora_te_text_model_"  # as kohya names CLIP's layers
            name = prefix + module.replace(".", "_")
            down = "lora_A" in key or ".down." in key
            kohya[f"{name}.lora_{'down' if down else 'up'}.weight"] = f.get_tensor(key)
            kohya[f"{name}.alpha"] = np.array(8.0 if component == "unet" else 2.0, np.float32)
    save_file(kohya, str(folder / "kohya.safetensors"))
    return {"diffusers": diffusers_file, "kohya": folder / "kohya.safetensors"}


def _reference(small_checkpoint, lora, scale):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(small_checkpoint["diffusers"], safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.load_lora_weights(str(lora))
    pipe.fuse_lora(lora_scale=scale)
    pipe.unload_lora_weights()  # the fused weights stay
    pipe.set_progress_bar_config(disable=True)
    for component in ("unet", "text_encoder"):  # diffusers fused every layer of the file (it can drop some)
        before = small_checkpoint[component].state_dict()
        changed = {k for k, v in getattr(pipe, component).state_dict().items() if not torch.equal(v, before[k])}
        assert len(changed) == LAYERS[component], (component, len(changed))
    return pipe


@pytest.mark.parametrize("form", ["diffusers", "kohya"])
@pytest.mark.parametrize("scale", [1.0, 0.6])
def test_a_fused_lora_matches_diffusers(small_checkpoint, lora_files, form, scale):
    ref = _reference(small_checkpoint, lora_files[form], scale)
    pipe = load_pipeline(small_checkpoint["mlx"], loras=[(lora_files[form], scale)])
    assert [r["scale"] for r in pipe.record["loras"]] == [scale]
    with safe_open(str(lora_files["diffusers"]), framework="numpy") as f:  # every layer of the file is fused
        ups = [k.split(".")[0] for k in f.keys() if k.endswith(("lora_B.weight", ".up.weight"))]
    assert pipe.record["loras"][0]["layers"] == {"unet": ups.count("unet"), "text_encoder": ups.count("text_encoder")}
    assert {"unet": ups.count("unet"), "text_encoder": ups.count("text_encoder")} == LAYERS
    # the text encoder
    with torch.no_grad():
        embeddings = ref.encode_prompt([PROMPT], "cpu", 1, False)[0].numpy()
    got = np.array(pipe.encode_prompt([PROMPT]))
    assert rel_l2(got, embeddings) <= 1e-4
    # the UNet, on the same latents and embeddings
    latents = np.random.default_rng(1).standard_normal((1, 16, 16, 4)).astype(np.float32)
    with torch.no_grad():
        t = torch.tensor([pipe.scheduler.timestep])
        noise = ref.unet(nchw(latents), t, encoder_hidden_states=torch.from_numpy(embeddings)).sample.numpy()
    got_noise = np.array(pipe.predict_noise(mx.array(latents), mx.array(embeddings)))
    assert rel_l2(got_noise, noise.transpose(0, 2, 3, 1)) <= 1e-4
    # the one-step image
    with torch.no_grad():
        image = ref([PROMPT], latents=nchw(latents), num_inference_steps=1, height=128, width=128, guidance_scale=0.0,
                    output_type="np").images
    expected = (image * 255).round().astype(np.uint8)
    frame = np.array(pipe.generate(mx.array(latents), pipe.encode_prompt([PROMPT])))
    within = np.mean(np.abs(frame.astype(int) - expected.astype(int)) <= 1)
    print(f"{form} x{scale}: text encoder {rel_l2(got, embeddings):.2e}, UNet {rel_l2(got_noise, noise.transpose(0, 2, 3, 1)):.2e}, "
          f"pixels within 1/255 {within:.4%}")
    assert within >= 0.999
    plain = load_pipeline(small_checkpoint["mlx"])  # the LoRA changes the embeddings and the noise predicted
    assert rel_l2(np.array(plain.encode_prompt([PROMPT])), got) > 0.05
    assert rel_l2(np.array(plain.predict_noise(mx.array(latents), mx.array(embeddings))), got_noise) > 0.05 * scale


def test_a_lora_fuses_before_quantizing_and_the_record_says_so(small_checkpoint, lora_files):
    pipe = load_pipeline(small_checkpoint["mlx"], loras=[str(lora_files["kohya"])], bits=8)
    assert pipe.quantization["unet"]["bits"] == 8 and pipe.record["loras"][0]["file"] == "kohya.safetensors"
    float_pipe = load_pipeline(small_checkpoint["mlx"], loras=[str(lora_files["kohya"])])
    latents = mx.random.normal((1, 16, 16, 4), key=mx.random.key(2))
    a = np.array(pipe.generate(latents, pipe.encode_prompt([PROMPT])), np.int32)
    b = np.array(float_pipe.generate(latents, float_pipe.encode_prompt([PROMPT])), np.int32)
    assert np.mean(np.abs(a - b)) < 3
    with pytest.raises(MusicvizError, match="quantized; LoRAs fuse into float weights"):
        pipe.fuse_lora(lora_files["kohya"])


def test_loras_that_do_not_fit_are_one_clear_error(small_checkpoint, lora_files, tmp_path):
    from safetensors.numpy import save_file

    layer = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file({f"unet.{layer}.lora_A.weight": np.zeros((2, 7), np.float32),  # made for a layer of 7 inputs
               f"unet.{layer}.lora_B.weight": np.zeros((64, 2), np.float32)}, str(tmp_path / "wide.safetensors"))
    with pytest.raises(MusicvizError, match=rf"does not fit this model: unet layer {layer} is \(64, 64\) but the "
                                            r"LoRA makes \(64, 7\)"):
        load_pipeline(small_checkpoint["mlx"], loras=[tmp_path / "wide.safetensors"])
    save_file({"unet.mid_block.attentions.0.proj_in.lora_A.weight": np.zeros((2, 64), np.float32),
               "unet.mid_block.attentions.0.proj_in.lora_B.weight": np.zeros((64, 2), np.float32)},
              str(tmp_path / "sd15.safetensors"))  # the small sdxs layout has no mid block
    with pytest.raises(MusicvizError, match="does not fit this model: its unet has no layer mid_block"):
        load_pipeline(small_checkpoint["mlx"], loras=[tmp_path / "sd15.safetensors"])
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(lora_files["kohya"].read_bytes()[:1000])
    with pytest.raises(MusicvizError, match="not a readable safetensors LoRA file"):
        load_pipeline(small_checkpoint["mlx"], loras=[truncated])
    with pytest.raises(MusicvizError, match="LoRA file not found"):
        load_pipeline(small_checkpoint["mlx"], loras=[tmp_path / "nope.safetensors"])
    save_file({"lora_unet_no_such_layer.lora_down.weight": np.zeros((2, 4), np.float32),
               "lora_unet_no_such_layer.lora_up.weight": np.zeros((4, 2), np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(MusicvizError, match="lora_unet_no_such_layer.lora_down.weight names no layer of its unet"):
        load_pipeline(small_checkpoint["mlx"], loras=[tmp_path / "other.safetensors"])
    save_file({"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": np.zeros((2, 4), np.float32)},
              str(tmp_path / "sdxl.safetensors"))  # SDXL's second text encoder, on a model with one
    with pytest.raises(MusicvizError, match="changes the text_encoder_2, which this model does not have"):
        load_pipeline(small_checkpoint["mlx"], loras=str(tmp_path / "sdxl.safetensors"))  # one LoRA, given bare
    save_file({"foo": np.zeros(2, np.float32)}, str(tmp_path / "foo.safetensors"))
    with pytest.raises(MusicvizError, match="foo.safetensors: not a LoRA key this project reads .*: foo"):
        load_pipeline(small_checkpoint["mlx"], loras=[tmp_path / "foo.safetensors"])
    with pytest.raises(MusicvizError, match="LoRA scale must be a finite number"):
        load_pipeline(small_checkpoint["mlx"], loras=[(lora_files["kohya"], "strong")])
    with pytest.raises(MusicvizError, match="LoRA scale 1e\\+30 is out of range"):
        load_pipeline(small_checkpoint["mlx"], loras=[(lora_files["kohya"], 1e30)])
    with pytest.raises(MusicvizError, match="is a folder: name the LoRA's .safetensors file in it"):
        load_pipeline(small_checkpoint["mlx"], loras=[tmp_path])
    up = np.ones((64, 2), np.float32)
    up[3, 1] = np.nan
    save_file({f"unet.{layer}.lora_A.weight": np.ones((2, 64), np.float32), f"unet.{layer}.lora_B.weight": up},
              str(tmp_path / "nan.safetensors"))
    with pytest.raises(MusicvizError, match=f"is damaged: its unet layer {layer} holds values that are not finite"):
        load_pipeline(small_checkpoint["mlx"], loras=[tmp_path / "nan.safetensors"])


def test_lora_arguments_read_path_and_scale():
    assert parse_lora("style.safetensors") == ("style.safetensors", 1.0)
    assert parse_lora("style.safetensors:0.7") == ("style.safetensors", 0.7)
    assert parse_lora("C:\\loras\\style.safetensors") == ("C:\\loras\\style.safetensors", 1.0)
    with pytest.raises(MusicvizError, match="LoRA scale must be a number, got 'strong'"):
        parse_lora("style.safetensors:strong")


def test_the_commands_take_loras_and_say_what_is_wrong_in_one_line(small_checkpoint, lora_files, tmp_path):
    from render_helpers import error_lines, run_cli, wav

    still = tmp_path / "still.png"
    done = run_cli("preview", "-p", PROMPT, "--model", small_checkpoint["mlx"], "--size", "128", "-o", still,
                   "--lora", f"{lora_files['kohya']}:0.5", "--lora", lora_files["diffusers"])
    assert done.exit_code == 0 and still.is_file(), done.output
    song = wav(tmp_path / "song.wav", 0.5)
    for lora, needle in ((f"{lora_files['kohya']}:strong", "LoRA scale must be a number, got 'strong'"),
                         (tmp_path / "missing.safetensors", "LoRA file not found")):
        bad = run_cli("render", song, "-p", "x", "--model", small_checkpoint["mlx"], "--size", "64", "--lora", lora,
                      "-o", tmp_path / "v.mp4")
        assert bad.exit_code == 1 and [needle in line for line in error_lines(bad)] == [True], bad.stderr
    assert not (tmp_path / "v.mp4").exists()


def test_convert_fuses_loras_before_quantizing_and_records_them(small_checkpoint, lora_files, tmp_path):
    from render_helpers import run_cli

    done = run_cli("convert", small_checkpoint["diffusers"], tmp_path / "q8", "--bits", "8",
                   "--lora", f"{lora_files['kohya']}:0.6")
    assert done.exit_code == 0 and "1 LoRA fused" in done.output, done.output
    converted = load_pipeline(tmp_path / "q8")
    in_memory = load_pipeline(small_checkpoint["mlx"], loras=[(lora_files["kohya"], 0.6)], bits=8)
    [record] = converted.record["loras"]
    assert (record["file"], record["scale"]) == ("kohya.safetensors", 0.6) and converted.quantization["unet"]["bits"] == 8
    latents = mx.random.normal((1, 16, 16, 4), key=mx.random.key(4))
    a = np.array(converted.generate(latents, converted.encode_prompt([PROMPT])))
    b = np.array(in_memory.generate(latents, in_memory.encode_prompt([PROMPT])))
    assert np.array_equal(a, b)  # the stored checkpoint is the one load_pipeline fuses and quantizes
    again = run_cli("convert", tmp_path / "q8", tmp_path / "again", "--lora", lora_files["kohya"])
    assert again.exit_code == 1 and "quantized; LoRAs fuse into float weights" in again.stderr


SDXL_UNET_TARGETS = [*UNET_TARGETS, "conv_shortcut", "conv", "linear_1", "linear_2"]  # + down/upsamplers, time MLPs


@pytest.fixture(scope="module")
def sdxl_lora(tmp_path_factory):
    """The small SDXL checkpoint and a random LoRA of its UNet (rank 4, alpha 8; attention, feed-forward,
    convolutions including the down- and upsamplers and shortcuts, the time and added-conditioning MLPs) and
    both text encoders (rank 2, alpha 2), in diffusers' format and in kohya's SDXL form: the UNet's layers
    named in the SGM layout (`lora_unet_input_blocks_4_1_...`), the text encoders `lora_te1_`, `lora_te2_`."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from reference import small_sdxl_checkpoint
    from safetensors.numpy import save_file

    from mlx_musicviz.lora import sgm_names

    folder = tmp_path_factory.mktemp("sdxl-lora")
    src, converted = small_sdxl_checkpoint(folder, seed=10)
    pipe = StableDiffusionXLPipeline.from_pretrained(src)
    sgm = sgm_names({k.removesuffix(".weight") for k in pipe.unet.state_dict() if k.endswith(".weight")})
    unet_config = LoraConfig(r=4, lora_alpha=8, target_modules=SDXL_UNET_TARGETS)
    text_config = LoraConfig(r=2, lora_alpha=2, target_modules=TEXT_TARGETS)
    unet = _random_adapter(pipe.unet, unet_config, 5, 0.05)
    te1 = convert_state_dict_to_diffusers(_random_adapter(pipe.text_encoder, text_config, 6, 0.05))
    te2 = convert_state_dict_to_diffusers(_random_adapter(pipe.text_encoder_2, text_config, 7, 0.05))
    StableDiffusionXLPipeline.save_lora_weights(
        folder / "diffusers", unet_lora_layers=unet, text_encoder_lora_layers=te1, text_encoder_2_lora_layers=te2,
        unet_lora_adapter_metadata=unet_config.to_dict(), text_encoder_lora_adapter_metadata=text_config.to_dict(),
        text_encoder_2_lora_adapter_metadata=text_config.to_dict())
    diffusers_file = folder / "diffusers" / "pytorch_lora_weights.safetensors"
    kohya = {}
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    with safe_open(str(diffusers_file), framework="numpy") as f:
        for key in f.keys():
            component, rest = key.split(".", 1)
            module, _ = rest.rsplit(".lora_", 1) if ".lora_" in rest else rest.rsplit(".lora.", 1)
            module = module.removesuffix(".lora_linear_layer")
            name = prefixes[component] + (sgm[module] if component == "unet" else module).replace(".", "_")
            down = "lora_A" in key or ".down." in key
            kohya[f"{name}.lora_{'down' if down else 'up'}.weight"] = f.get_tensor(key)
            kohya[f"{name}.alpha"] = np.array(8.0 if component == "unet" else 2.0, np.float32)
    save_file(kohya, str(folder / "kohya.safetensors"))
    assert any(k.startswith("lora_unet_input_blocks_3_0_op") for k in kohya)  # the SGM names are exercised
    assert any(k.startswith("lora_unet_label_emb_0_0") for k in kohya)
    return {"diffusers_checkpoint": src, "mlx": converted, "diffusers": diffusers_file,
            "kohya": folder / "kohya.safetensors"}


@pytest.mark.parametrize("form", ["diffusers", "kohya"])
def test_an_sdxl_lora_matches_diffusers(sdxl_lora, form):
    """UNet and both text encoders: diffusers' load_lora_weights + fuse_lora(0.7) on the same file."""
    from diffusers import StableDiffusionXLPipeline

    scale = 0.7
    plain = StableDiffusionXLPipeline.from_pretrained(sdxl_lora["diffusers_checkpoint"])
    ref = StableDiffusionXLPipeline.from_pretrained(sdxl_lora["diffusers_checkpoint"])
    ref.load_lora_weights(str(sdxl_lora[form]))
    ref.fuse_lora(lora_scale=scale, components=["unet", "text_encoder", "text_encoder_2"])
    ref.unload_lora_weights()
    ref.set_progress_bar_config(disable=True)
    pipe = load_pipeline(sdxl_lora["mlx"], loras=[(sdxl_lora[form], scale)])
    layers = pipe.record["loras"][0]["layers"]
    for component in ("unet", "text_encoder", "text_encoder_2"):  # diffusers fused every layer we did
        before = getattr(plain, component).state_dict()
        changed = [k for k, v in getattr(ref, component).state_dict().items() if not torch.equal(v, before[k])]
        assert len(changed) == layers[component], (component, len(changed), layers)
    with torch.no_grad():
        tokens, _, pooled, _ = ref.encode_prompt([PROMPT], device="cpu", num_images_per_prompt=1,
                                                 do_classifier_free_guidance=False)
    embeds = pipe.encode_prompt([PROMPT])
    got_tokens, got_pooled = pipe.split_prompt_embeds(embeds)
    text_err = max(rel_l2(np.array(got_tokens), tokens.numpy()), rel_l2(np.array(got_pooled), pooled.numpy()))
    latents = np.random.default_rng(2).standard_normal((1, 16, 16, 4)).astype(np.float32)
    sample = latents * pipe.scheduler.noise_scale
    with torch.no_grad():
        ids = torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]])
        noise = ref.unet(nchw(sample), torch.tensor([999]), encoder_hidden_states=tokens,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample.numpy()
        image = ref([PROMPT], latents=nchw(latents), num_inference_steps=1, height=128, width=128, guidance_scale=0.0,
                    output_type="np").images
    got_noise = np.array(pipe.predict_noise(mx.array(sample), embeds))
    unet_err = rel_l2(got_noise, noise.transpose(0, 2, 3, 1))
    frame = np.array(pipe.text_to_image(PROMPT, mx.array(latents)))
    within = np.mean(np.abs(frame.astype(int) - (image * 255).round().astype(int)) <= 1)
    print(f"SDXL {form} x{scale}: layers {layers}; text encoders {text_err:.2e}, UNet {unet_err:.2e}, "
          f"pixels within 1/255 {within:.4%}")
    assert text_err <= 1e-4 and unet_err <= 1e-4 and within >= 0.999
    unfused = load_pipeline(sdxl_lora["mlx"])  # the LoRA changes both encoders' outputs and the noise
    tokens0, pooled0 = unfused.split_prompt_embeds(unfused.encode_prompt([PROMPT]))
    assert rel_l2(np.array(tokens0), np.array(got_tokens)) > 0.01 and rel_l2(np.array(pooled0), np.array(got_pooled)) > 0.01
    assert rel_l2(np.array(unfused.predict_noise(mx.array(sample), embeds)), got_noise) > 0.01


@pytest.mark.slow
def test_a_lora_on_the_full_size_unet_matches_peft(tmp_path):
    """sdxs-512-0.9's full UNet (random weights) with a random rank-8 LoRA on its attention, feed-forward,
    convolution and time-embedding layers, saved by diffusers: the fused MLX UNet against the peft model
    (the unfused reference) at 64x64 latents, scale 0.8."""
    from diffusers import StableDiffusionPipeline
    from mlx.utils import tree_flatten, tree_unflatten
    from peft import LoraConfig
    from reference import build_unet, read_reference_config

    from mlx_musicviz.convert import convert_component
    from mlx_musicviz.lora import fuse_lora
    from mlx_musicviz.models import build_model
    from mlx_musicviz.weights import load_into

    ref = build_unet(read_reference_config("sdxs-512-0.9", "unet"), seed=21)
    ref.save_pretrained(tmp_path / "unet", safe_serialization=True)
    state = _random_adapter(ref, LoraConfig(r=8, lora_alpha=8, target_modules=UNET_TARGETS), 22, 0.02)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=state)
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in ref.modules():  # the reference at scale 0.8: peft scales each layer's update
        if isinstance(module, BaseTunerLayer):
            module.scale_layer(0.8)
    config, weights = convert_component(tmp_path / "unet")
    unet = load_into(build_model(config), weights, "unet")
    fused, record = fuse_lora({"unet": dict(tree_flatten(unet.parameters()))},
                              tmp_path / "lora" / "pytorch_lora_weights.safetensors", 0.8)
    unet.update(tree_unflatten(list(fused["unet"].items())))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 64, 64, 4)).astype(np.float32)
    ctx = rng.standard_normal((1, 77, 1024)).astype(np.float32)
    with torch.no_grad():
        expected = ref(nchw(x), 999, encoder_hidden_states=torch.from_numpy(ctx)).sample.numpy().transpose(0, 2, 3, 1)
        ref.disable_adapters()
        plain = ref(nchw(x), 999, encoder_hidden_states=torch.from_numpy(ctx)).sample.numpy().transpose(0, 2, 3, 1)
    got = np.array(unet(mx.array(x), 999, mx.array(ctx)))
    err = rel_l2(got, expected)
    print(f"full-size UNet with a LoRA on {record['layers']['unet']} layers at scale 0.8: relative L2 {err:.2e} "
          f"(the LoRA moves the output by {rel_l2(plain, expected):.2e})")
    assert err <= 1e-4 and rel_l2(plain, expected) > 100 * err
