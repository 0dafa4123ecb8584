"""The benchmark runner works end to end (it asserts no speed: numbers are reported, not tested)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mlx_musicviz.benchmark import count_flops, interleaved_times
from mlx_musicviz.pipeline import Pipeline


def test_flop_count_of_the_full_size_unet_matches_the_architecture():
    """sdxs-512-0.9 at 512x512: 406 GFLOP of convolutions and linear layers in the UNet (the issue's
    independent count) plus ~12.4 GFLOP of attention products (4 n m d per attention); 141 GFLOP
    for the tiny-VAE decode."""
    import mlx.core as mx

    pipe = Pipeline.random("sdxs-512-0.9")
    latents = mx.zeros((1, 64, 64, 4))
    emb = mx.zeros((1, 77, 1024))
    flops = count_flops(lambda: mx.eval(pipe.unet(latents, None, emb, temb=pipe._temb)))
    vae = count_flops(lambda: mx.eval(pipe.vae.decode(latents)))
    assert 412e9 < flops < 424e9, flops
    assert 135e9 < vae < 145e9, vae


def test_interleaved_times_take_turns_and_drop_the_warm_up(monkeypatch):
    """Every side runs each component once a round, the order rotating; the warm-up round is not
    kept; a pause comes only where the process changes (a "pytorch" side is another process)."""
    calls, clock = [], iter(range(1000))

    def side(name):
        return {c: (lambda c=c: calls.append((name, c)) or float(next(clock))) for c in ("unet", "vae")}

    sides = {"float32": side("float32"), "8bit": side("8bit"), "pytorch-float32": side("pytorch-float32")}
    sides["8bit"].pop("vae")  # a side may lack a component
    pauses = []
    monkeypatch.setattr("mlx_musicviz.benchmark.time.sleep", pauses.append)
    times = interleaved_times(sides, runs=2, switch_pause=0.5)
    # warm-up (round -1) in the given order, then round 0 the same, round 1 rotated by one
    assert calls[:5] == [("float32", "unet"), ("8bit", "unet"), ("pytorch-float32", "unet"),
                         ("float32", "vae"), ("pytorch-float32", "vae")]
    assert calls[10:15] == [("8bit", "unet"), ("pytorch-float32", "unet"), ("float32", "unet"),
                            ("pytorch-float32", "vae"), ("float32", "vae")]
    assert len(calls) == 15
    assert times["float32"]["unet"] == [5.0, 12.0] and times["8bit"]["unet"] == [6.0, 10.0]
    assert times["pytorch-float32"]["vae"] == [9.0, 13.0] and "vae" not in times["8bit"]
    # a pause at each change of process: 3 in the warm-up, 4 in round 0 (its first call follows
    # PyTorch), 5 in round 1 (every call changes process)
    assert pauses == [0.5] * 12, pauses


@pytest.mark.slow
def test_bench_quick_writes_json_markdown_and_chart(tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    assert data["matmul_gflops"] > 0 and data["flops"]["unet"] > 0
    levels = {(r["level"], r["batch"]) for r in data["rows"]}
    assert levels == {(lv, b) for lv in ("float32", "8bit", "4bit") for b in (1, 2)}
    for row in data["rows"]:
        assert row["fps"] > 0 and row["frame_s"] > 0
        assert sum(row["weight_bytes"].values()) > 0 and row["peak_memory"] > 0
    by = {(r["level"], r["batch"]): r for r in data["rows"]}
    assert sum(by[("4bit", 1)]["weight_bytes"].values()) < sum(by[("float32", 1)]["weight_bytes"].values())
    assert by[("8bit", 1)]["unet_rel_l2"] < 0.05 and by[("float32", 1)]["unet_rel_l2"] == 0
    # The PyTorch reference (the dev extra is installed wherever the tests run).
    assert {r["batch"] for r in data["reference"]} == {1, 2}
    assert all(r["mlx_over_pytorch"]["frame"] > 0 for r in data["reference"])
    assert all(r["over_float32"]["frame"] > 0 for r in data["rows"] if r["level"] != "float32")
    # one time a round (--quick: 1 round) per component, and the row's time is their median per image
    for row in data["rows"] + data["reference"]:
        assert {c: len(v) for c, v in row["rounds_s"].items()} == dict.fromkeys(("text_encoder", "unet", "vae", "frame"), 1)
        assert row["frame_s"] == pytest.approx(row["rounds_s"]["frame"][0] / row["batch"])
    # ... timed in a process of its own: no mlx, and not the OpenBLAS that mlx_musicviz preloads (which
    # would take over torch's sgemm_ calls and halve its speed).
    from mlx_musicviz import _blas

    info = data["reference_info"]
    assert info["mlx_imported"] is False and info["threads"] >= 1
    assert _blas._loaded is None or _blas._loaded not in info["blas_libraries"], info
    assert set(data["matmul_gflops_by"]) == {"mlx", "pytorch"}
    assert data["matmul_gflops"] == max(data["matmul_gflops_by"].values())
    assert data["render"]["frames"] == 48 and 0 <= data["render"]["overhead_fraction"] < 1
    # The issue's split: analysis, walks, model, encoding (and the prompts' text encoding).
    times = data["render"]["times"]
    assert {"analysis", "prompts", "walks", "model", "encode"} <= set(times) and times["walks"] > 0 < times["model"]
    assert all(r["text_encoder_s"] > 0 for r in data["rows"] + data["reference"])
    assert all(r["mlx_over_pytorch"]["text_encoder"] > 0 for r in data["reference"])
    assert "| float32 | 1 |" in (out / "results.md").read_text()
    assert Image.open(out / "fps.png").size[0] > 100
