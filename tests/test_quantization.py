"""Quantized checkpoints: layers, self-describing records, bit-identical reloads, size and error."""

import json
import subprocess
import sys
import warnings

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from reference import rel_l2

from mlx_musicviz import MusicvizError
from mlx_musicviz.convert import convert_checkpoint, read_record
from mlx_musicviz.loading import load_pipeline
from mlx_musicviz.models.quantized import (
    QuantizedConv2d,
    QuantizedEmbedding,
    QuantizedLinear,
    quantization_plan,
    quantize,
    weight_bytes,
)
from mlx_musicviz.ops import unpack

PROMPT = "a lighthouse in a storm, oil painting"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "mlx_musicviz.cli", *args], capture_output=True, text=True)


# -- layers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_unpack_matches_mlx_dequantize(bits, group_size):
    w = mx.random.normal((48, 384), key=mx.random.key(0)).astype(mx.float16)
    packed, scales, biases = mx.quantize(w, group_size, bits)
    # mlx's own dequantize, in float32 arithmetic (ours unpacks straight into the compute dtype)
    expected = mx.dequantize(packed, scales.astype(mx.float32), biases.astype(mx.float32), group_size, bits)
    got = unpack(packed, scales, biases, group_size, bits, mx.float32)
    assert got.dtype == mx.float32
    assert mx.array_equal(got, expected).item()


@pytest.mark.parametrize("bits,limit", [(8, 0.01), (4, 0.12)])
def test_quantized_layers_approximate_float_layers(bits, limit):
    key = mx.random.key(1)
    conv = nn.Conv2d(64, 48, 3, stride=2, padding=1)
    x = mx.random.normal((2, 12, 12, 64), key=key)
    assert rel_l2(QuantizedConv2d.from_float(conv, 64, bits)(x), conv(x)) < limit
    conv1 = nn.Conv2d(128, 32, 1)
    wide = mx.concatenate([x, -x], axis=-1)
    assert rel_l2(QuantizedConv2d.from_float(conv1, 32, bits)(wide), conv1(wide)) < limit
    linear = nn.Linear(256, 96)
    t = mx.random.normal((3, 5, 256), key=key)
    q = QuantizedLinear.from_float(linear, 64, bits)
    assert rel_l2(q(t), linear(t)) < limit
    # The two ways of computing a quantized linear layer agree.
    q.compute = "matmul"
    via_matmul = q(t)
    q.compute = "dequantize"
    assert rel_l2(via_matmul, q(t)) < 1e-5
    emb = nn.Embedding(500, 64)
    ids = mx.array([[0, 7, 499]])
    assert rel_l2(QuantizedEmbedding.from_float(emb, 64, bits)(ids), emb(ids)) < limit


@pytest.mark.parametrize("bits", [4, 8])
def test_quantize_is_mlx_layout_and_no_worse_than_min_max(bits):
    w = mx.random.normal((64, 512), key=mx.random.key(2)).astype(mx.float16)
    ours = quantize(w, 64, bits)
    theirs = mx.quantize(w, 64, bits)
    assert [a.shape for a in ours] == [a.shape for a in theirs] and ours[0].dtype == mx.uint32
    err = rel_l2(mx.dequantize(*ours, 64, bits), w)
    assert err <= rel_l2(mx.dequantize(*theirs, 64, bits), w) * (0.95 if bits == 4 else 1.0)


def test_plan_keeps_float_what_does_not_divide_and_obeys_overrides():
    model = nn.Sequential(nn.Conv2d(4, 64, 3), nn.Conv2d(64, 64, 3), nn.Linear(64, 10), nn.Linear(96, 10))
    plan = quantization_plan(model, 4, 64, {"layers.2": 8})
    assert plan.modules == {"layers.1": 4, "layers.2": 8}
    assert "not a multiple" in plan.float_modules["layers.0"] and "layers.3" in plan.float_modules
    plan = quantization_plan(model, 8, 32, {"layers.1": None})
    assert plan.modules == {"layers.2": 8, "layers.3": 8}
    assert plan.float_modules["layers.1"] == "kept float by choice"
    assert plan.float_modules["layers.0"] == "row length 36 is not a multiple of the group size 32"
    with pytest.raises(MusicvizError, match="bits"):
        quantization_plan(model, 3)
    with pytest.raises(MusicvizError, match="group size"):
        quantization_plan(model, 4, 48)


# -- checkpoints ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantized_checkpoints(small_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized")
    out = {}
    for bits in (4, 8):
        result = cli("convert", str(small_checkpoint["mlx"]), str(root / f"q{bits}"), "--bits", str(bits),
                     "--group-size", "32")
        assert result.returncode == 0, result.stderr
        out[bits] = root / f"q{bits}"
    return out


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_checkpoint_describes_itself(quantized_checkpoints, bits):
    folder = quantized_checkpoints[bits]
    record = read_record(folder)
    assert record["version"] == 2 and record["source"] and record["library_version"]
    assert set(record["quantization"]) == {"text_encoder", "unet", "vae_large"}  # the tiny VAE stays float
    unet = record["quantization"]["unet"]
    assert unet["bits"] == bits and unet["group_size"] == 32 and unet["mode"] == "affine"
    assert any(".conv1" in m for m in unet["modules"])  # convolutions are quantized
    assert "conv_in" in unet["float_modules"]  # 3x3x4 = 36 weights a row: not a multiple of 32
    from mlx_musicviz.weights import load_safetensors

    _, metadata = load_safetensors(folder / "unet" / "model.safetensors")
    assert json.loads(metadata["quantization"]) == unet


@pytest.mark.parametrize("bits", [4, 8])
def test_reload_gives_bit_identical_frames(small_checkpoint, quantized_checkpoints, bits):
    """Frames from the saved checkpoint equal those of the same model quantized in memory."""
    latents = mx.random.normal((2, 8, 8, 4), key=mx.random.key(3))
    loaded = load_pipeline(quantized_checkpoints[bits])
    frames = loaded.generate(latents, loaded.encode_prompt(PROMPT))

    in_memory = load_pipeline(small_checkpoint["mlx"]).quantize(bits, 32)
    again = in_memory.generate(latents, in_memory.encode_prompt(PROMPT))
    assert frames.dtype == mx.uint8
    assert mx.array_equal(frames, again).item()
    assert mx.array_equal(frames, load_pipeline(quantized_checkpoints[bits]).generate(
        latents, loaded.encode_prompt(PROMPT))).item()
    # And the quantized frames are close to the float ones.
    float_frames = load_pipeline(small_checkpoint["mlx"]).generate(latents, loaded.encode_prompt(PROMPT))
    diff = np.abs(np.array(frames, dtype=np.int32) - np.array(float_frames, dtype=np.int32))
    assert diff.mean() < (3 if bits == 8 else 20)


def test_record_and_tensors_that_disagree_are_a_clear_error(quantized_checkpoints, tmp_path):
    import shutil

    folder = shutil.copytree(quantized_checkpoints[4], tmp_path / "q")
    record = json.loads((folder / "musicviz.json").read_text())
    record["quantization"]["unet"]["bits"] = 8
    record["quantization"]["unet"]["modules"] = {k: 8 for k in record["quantization"]["unet"]["modules"]}
    (folder / "musicviz.json").write_text(json.dumps(record))
    with pytest.raises(MusicvizError, match="does not match musicviz.json.*8-bit.*4-bit"):
        load_pipeline(folder)


def test_quantizing_a_quantized_checkpoint_is_refused(quantized_checkpoints, tmp_path):
    result = cli("convert", str(quantized_checkpoints[4]), str(tmp_path / "again"), "--bits", "8")
    assert result.returncode == 1 and "already quantized" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "again").exists()


def test_mixed_and_per_component_choice(small_checkpoint, tmp_path):
    out = convert_checkpoint(small_checkpoint["mlx"], tmp_path / "m", bits=4, group_size=32, mixed=True,
                             quantize=("unet", "vae"))
    record = read_record(out)
    assert set(record["quantization"]) == {"unet", "vae"}
    unet = record["quantization"]["unet"]
    assert unet["bits"] == [4, 8] and unet["modules"]["conv_out"] == 8
    assert all(v == 8 for k, v in unet["modules"].items() if k.startswith("time_embedding") or "proj_" in k)
    assert any(v == 4 for k, v in unet["modules"].items() if k.endswith("conv1"))
    pipe = load_pipeline(out)
    assert pipe.weight_bytes()["text_encoder"] == load_pipeline(small_checkpoint["mlx"]).weight_bytes()["text_encoder"]
    assert mx.isfinite(pipe.generate(mx.zeros((1, 8, 8, 4)), pipe.encode_prompt("x")).astype(mx.float32)).all()


# -- full size: bytes and error ------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
def test_sdxl_quantized_checkpoint_describes_itself_and_reloads_bit_identical(tmp_path, bits):
    """SDXL: both text encoders and the UNet (convolutions included) are quantized and recorded; its KL
    VAE stays float; frames from the saved checkpoint equal those of the model quantized in memory."""
    from reference import small_sdxl_checkpoint

    _, converted = small_sdxl_checkpoint(tmp_path, seed=9)
    result = cli("convert", str(converted), str(tmp_path / "q"), "--bits", str(bits), "--group-size", "32")
    assert result.returncode == 0, result.stderr
    record = read_record(tmp_path / "q")
    assert set(record["quantization"]) == {"text_encoder", "text_encoder_2", "unet"}
    assert any(".conv1" in m for m in record["quantization"]["unet"]["modules"])
    assert all(record["quantization"][part]["modules"] for part in ("text_encoder", "text_encoder_2"))
    latents = mx.random.normal((1, 8, 16, 4), key=mx.random.key(4))
    frames = load_pipeline(tmp_path / "q").text_to_image(PROMPT, latents)
    again = load_pipeline(converted).quantize(bits, 32).text_to_image(PROMPT, latents)
    assert frames.shape == (1, 64, 128, 3) and mx.array_equal(frames, again).item()
    float_frames = np.array(load_pipeline(converted).text_to_image(PROMPT, latents), dtype=np.int32)
    assert 0 < np.abs(np.array(frames, dtype=np.int32) - float_frames).mean() < (3 if bits == 8 else 20)


@pytest.mark.slow
def test_full_size_sdxs09_unet_size_and_error(tmp_path):
    """sdxs-512-0.9's UNet (random weights built by diffusers): bytes on disk and in memory against
    float16, and the error of the UNet output and the frame against float32, per level."""
    from reference import (
        build_text_encoder,
        build_tiny_vae,
        build_unet,
        read_reference_config,
        save_diffusers_checkpoint,
    )

    te = build_text_encoder(dict(hidden_size=1024, intermediate_size=1024, num_hidden_layers=1, num_attention_heads=16,
                                 hidden_act="gelu", bos_token_id=0, eos_token_id=2, projection_dim=1024), seed=12)
    src = save_diffusers_checkpoint(tmp_path / "diffusers",
                                    build_unet(read_reference_config("sdxs-512-0.9", "unet"), seed=11), te,
                                    build_tiny_vae(read_reference_config("sdxs-512-0.9", "vae"), seed=13), "!")
    f32 = convert_checkpoint(src, tmp_path / "f32")
    f16 = convert_checkpoint(f32, tmp_path / "f16", dtype="float16")
    f16_disk = (f16 / "unet" / "model.safetensors").stat().st_size
    ref = load_pipeline(f32)
    latents = mx.random.normal((1, 64, 64, 4), key=mx.random.key(5))
    emb = ref.encode_prompt(PROMPT)
    ref_noise = ref.predict_noise(latents, emb)
    ref_frame = np.array(ref.decode(ref.scheduler.step(ref_noise, latents)), dtype=np.float64)
    with warnings.catch_warnings():  # float16 compute is slow on the CPU; only its resident bytes are used here
        warnings.filterwarnings("ignore", message=".*no half-precision BLAS")
        f16_resident = weight_bytes(load_pipeline(f16, dtype=mx.float16).unet)
    del ref

    limits = {(8, False): (0.58, 0.02), (4, False): (0.32, 0.20), (4, True): (0.36, 0.15)}
    for (bits, mixed), (size_limit, error_limit) in limits.items():
        q = convert_checkpoint(f32, tmp_path / f"q{bits}{mixed}", bits=bits, mixed=mixed)
        pipe = load_pipeline(q)
        disk = (q / "unet" / "model.safetensors").stat().st_size / f16_disk
        resident = weight_bytes(pipe.unet) / f16_resident
        noise = pipe.predict_noise(latents, emb)
        error = rel_l2(noise, ref_noise)
        frame = np.array(pipe.decode(pipe.scheduler.step(noise, latents)), dtype=np.float64)
        psnr = 10 * np.log10(255**2 / max(np.mean((frame - ref_frame) ** 2), 1e-12))
        print(f"sdxs-512-0.9 UNet {bits}-bit{' mixed' if mixed else ''} g64: disk {disk:.3f} x fp16, "
              f"resident {resident:.3f} x fp16, UNet rel L2 {error:.4f}, frame PSNR {psnr:.1f} dB")
        assert disk <= size_limit and resident <= size_limit
        assert error <= error_limit
        del pipe
