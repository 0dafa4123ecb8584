"""The converter: layout, record, and one-line errors for bad sources."""

import json
import os
import shutil
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from render_helpers import run_cli

from mlx_musicviz import MusicvizError
from mlx_musicviz.convert import convert_checkpoint, read_record
from mlx_musicviz.loading import load_pipeline


def cli(*args):
    return subprocess.run([sys.executable, "-m", "mlx_musicviz.cli", *args], capture_output=True, text=True)


def test_converted_layout_and_record(small_checkpoint):
    dst = small_checkpoint["mlx"]
    record = read_record(dst)
    assert record["format"] == "mlx-musicviz" and record["library_version"]
    assert set(record["components"]) == {"text_encoder", "unet", "vae", "vae_large"}
    assert record["components"]["unet"] == "float32"
    for c in record["components"]:
        assert (dst / c / "model.safetensors").exists() and (dst / c / "config.json").exists()
    assert (dst / "tokenizer").is_dir() and (dst / "scheduler" / "scheduler_config.json").exists()


def test_reconvert_mlx_checkpoint_to_float16(small_checkpoint, tmp_path):
    out = convert_checkpoint(small_checkpoint["mlx"], tmp_path / "f16", dtype="float16")
    assert read_record(out)["components"]["unet"] == "float16"


def _copy(small_checkpoint, tmp_path):
    return shutil.copytree(small_checkpoint["diffusers"], tmp_path / "src")


def _one_line_error(result, *needles):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_component(small_checkpoint, tmp_path):
    src = _copy(small_checkpoint, tmp_path)
    shutil.rmtree(src / "unet")
    _one_line_error(cli("convert", str(src), str(tmp_path / "out")), "unet")
    assert not (tmp_path / "out").exists()


def test_truncated_file_names_the_file(small_checkpoint, tmp_path):
    src = _copy(small_checkpoint, tmp_path)
    f = src / "unet" / "diffusion_pytorch_model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    _one_line_error(cli("convert", str(src), str(tmp_path / "out")), "truncated", str(f))
    assert not (tmp_path / "out").exists()


def test_shape_that_does_not_fit_the_config(small_checkpoint, tmp_path):
    src = _copy(small_checkpoint, tmp_path)
    cfg = json.loads((src / "unet" / "config.json").read_text())
    cfg["cross_attention_dim"] = 32
    (src / "unet" / "config.json").write_text(json.dumps(cfg))
    _one_line_error(cli("convert", str(src), str(tmp_path / "out")), "diffusion_pytorch_model.safetensors", "shape")


def test_pickle_files_are_refused(small_checkpoint, tmp_path):
    src = _copy(small_checkpoint, tmp_path)
    (src / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (src / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not really")
    _one_line_error(cli("convert", str(src), str(tmp_path / "out")), "pickle")


def test_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    import os

    r = subprocess.run([sys.executable, "-m", "mlx_musicviz.cli", "convert", "IDKiro/sdxs-512-0.9", str(tmp_path / "o")],
                       capture_output=True, text=True, env={**os.environ, **env})
    _one_line_error(r, "IDKiro/sdxs-512-0.9", "offline")


def test_failed_conversion_keeps_an_existing_checkpoint(small_checkpoint, tmp_path):
    good = convert_checkpoint(small_checkpoint["mlx"], tmp_path / "ckpt")
    before = (good / "unet" / "model.safetensors").read_bytes()
    src = _copy(small_checkpoint, tmp_path)
    shutil.rmtree(src / "vae")
    with pytest.raises(MusicvizError):
        convert_checkpoint(src, good)
    assert (good / "unet" / "model.safetensors").read_bytes() == before


@pytest.fixture
def umask_002():
    """A umask other than the usual 022, so that modes that follow it are told from fixed ones."""
    previous = os.umask(0o002)
    yield
    os.umask(previous)


def test_convert_random_tiny_writes_a_checkpoint_with_its_weights_and_plain_modes(tmp_path, umask_002):
    dst = tmp_path / "random-tiny"
    result = run_cli("convert", "random:tiny", dst)
    assert result.exit_code == 0, result.output
    loaded, random = load_pipeline(dst), load_pipeline("random:tiny")
    assert loaded.record["source"] == "random:tiny" and loaded.is_random
    latents = mx.random.normal(random.latent_shape(64, 64, 2), key=mx.random.key(3))
    for vae in ("tiny", "large"):
        expected = np.array(random.generate(latents, random.encode_prompt("a red fox"), vae))
        assert np.array_equal(np.array(loaded.generate(latents, loaded.encode_prompt("a red fox"), vae)), expected)
    # as a plain mkdir / open with umask 002 makes them (mkdtemp made the checkpoint 0700)
    for folder, _, files in os.walk(dst):
        assert os.stat(folder).st_mode & 0o777 == 0o775, folder
        for name in files:
            assert os.stat(os.path.join(folder, name)).st_mode & 0o777 == 0o664, name


def test_convert_random_tiny_sdxl_keeps_both_text_encoders(tmp_path):
    """SDXL's layout at small widths: the second tokenizer and text encoder (with its projection) are
    written and read back, and the frames are the random model's."""
    result = run_cli("convert", "random:tiny-sdxl", tmp_path / "xl")
    assert result.exit_code == 0, result.output
    assert {"text_encoder_2", "tokenizer_2"} <= {p.name for p in (tmp_path / "xl").iterdir()}
    loaded, random = load_pipeline(tmp_path / "xl"), load_pipeline("random:tiny-sdxl")
    assert loaded.tokenizer_2.pad_token == random.tokenizer_2.pad_token == "!" != loaded.tokenizer.pad_token
    latents = mx.random.normal(random.latent_shape(64, 128), key=mx.random.key(3))
    expected = np.array(random.text_to_image("a red fox", latents))
    assert np.array_equal(np.array(loaded.text_to_image("a red fox", latents)), expected) and expected.std() > 1


def test_convert_tiny_vae_refusals_are_one_line(small_checkpoint, tmp_path):
    """--tiny-vae: a model whose vae/ is already tiny (SDXS), a tiny VAE of other latents (the real TAEF2 weights:
    32 channels) and a missing one are each one error line, and nothing is left at the destination."""
    from reference import DATA, small_kl_checkpoint

    _, kl = small_kl_checkpoint(tmp_path / "kl", "sd21", "openclip", "!", "sd-turbo", seed=2)
    cases = [(small_checkpoint["mlx"], DATA / "weights" / "taef2", "already a tiny VAE (SDXS)"),
             (kl, DATA / "weights" / "taef2", "takes 32-channel latents; this model's UNet makes 4"),
             (kl, tmp_path / "no-such-taesd", "not found")]
    from safetensors.numpy import save_file

    (tmp_path / "fake").mkdir()
    for part in ("encoder", "decoder"):  # TAESD names, other tensors
        save_file({"conv_in.weight": np.zeros((4, 4), np.float32)}, str(tmp_path / "fake" / f"taesd_{part}.safetensors"))
    cases += [(kl, tmp_path / "fake", "the decoder file is not a TAESD decoder"),
              (kl, tmp_path / "fake" / "taesd_decoder.safetensors", "the decoder file is not a TAESD decoder")]
    (tmp_path / "plain.safetensors").write_bytes((tmp_path / "fake" / "taesd_decoder.safetensors").read_bytes())
    cases.append((kl, tmp_path / "plain.safetensors", "is not a tiny VAE this project reads"))
    for src, tiny, needle in cases:
        result = run_cli("convert", src, tmp_path / "out", "--tiny-vae", tiny)
        assert result.exit_code == 1 and needle in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "out").exists()
    result = run_cli("convert", kl, tmp_path / "out", "--bits", "8", "--quantize", "unet,vae_large")
    assert result.exit_code == 1 and "cannot quantize vae_large: this model has no vae_large/" in result.stderr
