"""The benchmark runner works end to end (it asserts no speed: numbers are reported, not tested)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from mlx_musicviz.benchmark import (
    PROFILE_KINDS,
    call_layer,
    count_flops,
    interleaved_times,
    layer_flops,
    layer_shapes,
    profile_frame,
    timing_kinds,
    watching_layers,
)
from mlx_musicviz.pipeline import Pipeline


def test_flop_count_of_the_full_size_unet_matches_the_architecture():
    """sdxs-512-0.9 at 512x512: 406 GFLOP of convolutions and linear layers in the UNet (the issue's
    independent count) plus ~12.4 GFLOP of attention products (4 n m d per attention); 141 GFLOP
    for the tiny-VAE decode."""
    import mlx.core as mx

    pipe = Pipeline.random("sdxs-512-0.9")
    latents = mx.zeros((1, 64, 64, 4))
    emb = mx.zeros((1, 77, 1024))
    flops = count_flops(lambda: mx.eval(pipe.predict_noise(latents, emb)))
    vae = count_flops(lambda: mx.eval(pipe.vae.decode(latents)))
    assert 412e9 < flops < 424e9, flops
    assert 135e9 < vae < 145e9, vae


def test_layer_shapes_list_every_convolution_and_linear_call_once_per_shape():
    """The shapes `--layers` times: together they are every convolution and linear-layer call of
    the UNet (and nothing else), each distinct shape once with its count; a listed module called
    on an input of the listed shape does the listed FLOPs."""
    import mlx.core as mx

    pipe = Pipeline.random("tiny")
    latents = mx.zeros((2, 16, 16, 4))
    emb = mx.zeros((2, 77, pipe.text_encoder.hidden_size))

    def unet():
        mx.eval(pipe.predict_noise(latents, emb))

    shapes = layer_shapes(unet)
    seen = []
    with watching_layers(lambda kind, module, args, out: seen.append((kind, layer_flops(kind, module, args, out)))):
        unet()
    calls = [flops for kind, flops in seen if kind in ("conv", "linear")]
    assert sum(s["calls"] for s in shapes) == len(calls) > len(shapes) > 5
    assert sum(s["calls"] * s["flops"] for s in shapes) == pytest.approx(sum(calls))
    assert sum(flops for _, flops in seen) == pytest.approx(count_flops(unet))  # the attention products are the rest
    keys = [tuple((k, str(v)) for k, v in s.items() if k not in ("calls", "flops", "module")) for s in shapes]
    assert len(set(keys)) == len(keys)
    first = shapes[0]  # conv_in, on the latents
    assert first["kind"] == "conv" and first["input"] == (2, 16, 16, 4) and first["weight"][3] == 4
    assert first["stride"] == (1, 1) and first["bias"] is True
    assert any(s.get("upsample") == 2 for s in shapes)  # the up blocks' upsamplers
    for s in shapes:
        out = call_layer(s, s["module"], mx.random.normal(s["input"]))
        if s["kind"] == "conv":
            assert s["weight"] == tuple(s["module"].weight.shape)
            assert s["flops"] == 2.0 * out.size * s["weight"][1] * s["weight"][2] * s["weight"][3]
        else:
            assert s["weight"] == (out.shape[-1], s["input"][-1]) == tuple(s["module"].weight.shape)
            assert s["flops"] == 2.0 * out.size * s["input"][-1]


def test_the_pytorch_side_times_each_layer_shape_as_mlx_runs_it():
    """Every layer shape of a UNet call and of both VAEs' decodes, sent to the reference's child as
    a request line, builds a PyTorch call with the output MLX's layer gives (NCHW against NHWC): an
    upsampler's convolution included, nearest upsampling first."""
    import mlx.core as mx
    import torch
    from torch_reference import _layer_call, layer_request

    pipe = Pipeline.random("tiny")
    latents = mx.zeros((1, 16, 16, 4))
    emb = mx.zeros((1, 77, pipe.text_encoder.hidden_size))
    shapes = layer_shapes(lambda: mx.eval(pipe.predict_noise(latents, emb)))
    shapes += layer_shapes(lambda: mx.eval(pipe.vae.decode(latents)))
    shapes += layer_shapes(lambda: mx.eval(pipe.vae_large.decode(latents)))
    assert sum(1 for s in shapes if s.get("upsample")) >= 5
    for spec in shapes:
        sent = json.loads(json.dumps(layer_request(spec, 3)))["layer"]
        with torch.no_grad():
            out = _layer_call(sent, torch)()
        mine = call_layer(spec, spec["module"], mx.zeros(spec["input"]))
        expected = (mine.shape[0], mine.shape[3], mine.shape[1], mine.shape[2]) if spec["kind"] == "conv" else mine.shape
        assert tuple(out.shape) == tuple(expected), spec


def test_the_frame_profile_splits_its_time_by_kind_and_changes_nothing():
    """`profile_frame`: every kind of work the frame does gets time, the kinds' exclusive times fit
    inside the call (no time counted twice: "other" is not negative), the image is the plain call's
    bit for bit, and the profiled functions are themselves again afterwards. The tiny VAE alone has
    convolutions and activations only; the large one has attention and linear layers too."""
    import mlx.core as mx
    import mlx.nn as nn

    from mlx_musicviz import ops
    from mlx_musicviz.models import layers

    pipe = Pipeline.random("tiny")
    latents = mx.random.normal((2, 16, 16, 4), key=mx.random.key(0))
    emb = mx.random.normal((1, 77, pipe.text_encoder.hidden_size), key=mx.random.key(1))
    plain = pipe.generate(latents, emb)
    originals = (nn.Linear.__call__, layers.Conv2d.__call__, layers.GroupNorm.silu, ops.multi_head_attention, ops.upsample_conv)
    split = profile_frame(pipe, latents, emb)
    assert set(split) == {*PROFILE_KINDS, "total"}
    assert all(split[kind] > 0 for kind in PROFILE_KINDS[:-1]), split
    assert 0 <= split["other"] < split["total"]
    assert sum(split[kind] for kind in PROFILE_KINDS) == pytest.approx(split["total"])
    with timing_kinds({}):
        profiled = pipe.generate(latents, emb)
        mx.eval(profiled)
    assert mx.array_equal(profiled, plain).item()
    assert (nn.Linear.__call__, layers.Conv2d.__call__, layers.GroupNorm.silu, ops.multi_head_attention,
            ops.upsample_conv) == originals
    # A profiled call inside another is charged once: the UNet's wide upsampler at 16x16 (fewer pixels than
    # channels) is a convolution of the upsampled map inside `upsample_conv`, all three "convolution".
    conv = layers.Conv2d(512, 512, 3, padding=1)
    x = mx.random.normal((1, 8, 8, 512))
    mx.eval(conv.parameters(), x)
    seconds = {}
    with timing_kinds(seconds):
        start = time.perf_counter()
        mx.eval(ops.upsample_conv(x, conv))
        wall = time.perf_counter() - start
    assert set(seconds) == {"convolution"} and 0.5 * wall < seconds["convolution"] <= wall
    for vae, kinds in (("vae", {"convolution", "norm and activation"}),
                       ("vae_large", {"convolution", "norm and activation", "linear", "attention core"})):
        seconds = {}
        with timing_kinds(seconds):
            mx.eval(getattr(pipe, vae).decode(latents))
        assert {kind for kind, t in seconds.items() if t > 0} == kinds, (vae, seconds)


def test_pytorch_operators_are_counted_as_the_mlx_profile_counts_its_calls():
    from torch_reference import TORCH_KINDS, torch_kind

    assert set(TORCH_KINDS) == set(PROFILE_KINDS) - {"other"}
    assert torch_kind("aten::mkldnn_convolution") == torch_kind("aten::upsample_nearest2d") == "convolution"
    assert torch_kind("aten::addmm") == torch_kind("aten::mm") == "linear"
    assert torch_kind("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention core"
    assert torch_kind("aten::native_group_norm") == torch_kind("aten::clamp_min") == "norm and activation"
    assert torch_kind("aten::add") == torch_kind("aten::copy_") == "other"
    # on a CUDA GPU: cuDNN's convolution and the fused attention kernels
    assert torch_kind("aten::cudnn_convolution") == "convolution"
    assert torch_kind("aten::_scaled_dot_product_flash_attention") == "attention core"
    assert torch_kind("aten::_scaled_dot_product_efficient_attention") == "attention core"


def test_the_reference_runs_where_mlx_runs_and_waits_for_its_work(monkeypatch):
    """The reference runs on the device mlx runs on, and a level has a peak of its own only where the
    run measured one; on a GPU each timed torch call returns only after the device's queue is
    drained, and a torch that sees no GPU stops the reference with a one-line reason rather than
    timing the CPU in its place."""
    import mlx.core as mx
    import torch
    import torch_reference

    from mlx_musicviz.benchmark import BenchResult, level_peak, machine_info, reference_device, tf32_enabled

    info = machine_info()
    if mx.default_device() == mx.cpu:
        assert reference_device() == "cpu" and info["gpu"] is None and info["tf32"] is False
    else:  # mlx's CUDA or Metal backend
        assert reference_device() == ("mps" if sys.platform == "darwin" else "cuda") and info["gpu"]
    result = BenchResult(config={}, machine=info, matmul_gflops=100.0)
    assert level_peak(result, "float16") == level_peak(result, "8bit") == 100.0
    result.matmul_gflops_by_dtype["float16"] = 400.0
    assert level_peak(result, "float16") == 400.0 and level_peak(result, "float32") == 100.0

    monkeypatch.setenv("MLX_ENABLE_TF32", "0")
    assert not tf32_enabled()
    monkeypatch.setenv("MLX_ENABLE_TF32", "1")
    assert tf32_enabled()

    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: events.append("sync"))
    call = torch_reference._synced(lambda x: events.append(f"work {x}") or x, torch, "cuda")
    assert call(3) == 3 and events == ["work 3", "sync"]
    events.clear()
    assert torch_reference._synced(lambda: events.append("work"), torch, "cpu")() is None and events == ["work"]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        torch_reference._use_device(torch, "cuda", tf32=True)
    assert torch_reference._use_device(torch, "cpu", tf32=True) == "cpu"


def test_interleaved_times_take_turns_and_drop_the_warm_up(monkeypatch):
    """Every side runs each component once a round, the order rotating; the warm-up round is not
    kept; a pause comes only where the process changes (a "pytorch" side is another process)."""
    calls, clock = [], iter(range(1000))

    def side(name):
        return {c: (lambda c=c: calls.append((name, c)) or float(next(clock))) for c in ("unet", "vae")}

    sides = {"float32": side("float32"), "8bit": side("8bit"), "pytorch-float32": side("pytorch-float32")}
    sides["8bit"].pop("vae")  # a side may lack a component
    pauses = []
    monkeypatch.setattr("mlx_musicviz.benchmark.interleave.time.sleep", pauses.append)
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
    # the start-up: fresh processes analyse the render's clip (2 s), with none of the heavy imports
    startup = data["startup"]
    assert startup["seconds"] == pytest.approx(2.0) and startup["runs"] == 3 and startup["heavy_modules"] == []
    assert 0 < startup["import_s"] < startup["total_s"] and startup["analysis_s"] > 0
    assert all(r["text_encoder_s"] > 0 for r in data["rows"] + data["reference"])
    assert all(r["mlx_over_pytorch"]["text_encoder"] > 0 for r in data["reference"])
    # --quick includes --layers: every convolution and linear shape of the float32 UNet and VAE, both sides
    layers = data["layers"]
    assert {(r["batch"], r["component"], r["kind"]) for r in layers} == {
        (b, c, k) for b in (1, 2) for c, k in (("unet", "conv"), ("unet", "linear"), ("vae", "conv"))}
    for r in layers:
        assert r["calls"] >= 1 and r["flops"] > 0 and r["mlx_s"] > 0 and r["pytorch_s"] > 0 and r["mlx_over_pytorch"] > 0
        assert {k: len(v) for k, v in r["rounds_s"].items()} == {"float32": 1, "pytorch-float32": 1}
        # the batch's images, or the one time embedding they share (the resnets' time_emb_proj)
        assert r["input"][0] == r["batch"] or (r["kind"], r["input"][0]) == ("linear", 1)
    unet_flops = sum(r["calls"] * r["flops"] for r in layers if r["component"] == "unet" and r["batch"] == 1)
    assert 0.5 * data["flops"]["unet"] < unet_flops < data["flops"]["unet"]  # the rest: attention products
    vae_flops = sum(r["calls"] * r["flops"] for r in layers if r["component"] == "vae" and r["batch"] == 1)
    assert vae_flops == pytest.approx(data["flops"]["vae"])  # the tiny VAE is all convolutions
    # --quick includes --profile: the float32 frame by kind of work on both sides, each round's kinds adding up
    profile = data["profile"]
    assert [(r["batch"], r["kind"]) for r in profile] == [(b, k) for b in (1, 2) for k in (*PROFILE_KINDS, "total")]
    for batch in (1, 2):
        rows = {r["kind"]: r for r in profile if r["batch"] == batch}
        for side in ("float32", "pytorch-float32"):
            totals = rows["total"]["rounds_s"][side]
            assert len(totals) == 1 and sum(rows[k]["rounds_s"][side][0] for k in PROFILE_KINDS) == pytest.approx(totals[0])
        assert rows["convolution"]["mlx_s"] > 0 and rows["convolution"]["pytorch_s"] > 0
        assert rows["attention core"]["pytorch_s"] > 0 and rows["linear"]["pytorch_s"] > 0
        assert rows["total"]["mlx_s"] == pytest.approx(rows["total"]["rounds_s"]["float32"][0] / batch)
    # --quick plays 3 s through live mode with a simulated page: it plays to the end, shows frames, never one
    # ahead of its clock, and no more a second than the song's fps
    live = data["live"]
    assert live["played_s"] >= 2.9 and live["shown"] >= 1 and live["sync_min_ms"] >= 0
    assert live["displayed_fps"] <= 1.05 * live["fps"] and live["generated_fps"] > 0
    md = (out / "results.md").read_text()
    assert "Live (a simulated page plays the song" in md
    assert "Start-up: a fresh process analyses 2.0 s of audio in" in md
    assert "| float32 | 1 |" in md
    assert "| 1 | vae | conv |" in md and "| 2 | unet | other |" in md and "largest gaps" in md
    assert "| 2 | attention core |" in md and "by kind of work" in md
    assert Image.open(out / "fps.png").size[0] > 100


def test_bench_quick_refuses_the_options_it_would_override(tmp_path):
    """`--quick` replaces model, size, levels, batches, runs and render length: naming one with it is a
    usage error, not silently ignored; and a bad level, without --quick, is one line and exit 1."""
    def bench(*args):
        return subprocess.run([sys.executable, "-m", "mlx_musicviz.cli", "bench", *args, "--out", str(tmp_path)],
                              capture_output=True, text=True)

    r = bench("--quick", "--levels", "float32", "--batches", "4")
    assert r.returncode == 2 and "--quick sets its own --levels, --batches" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not any(tmp_path.iterdir())
    r = bench("--levels", "3bit", "--batches", "1", "--render-seconds", "0", "--no-reference")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: unknown level '3bit'"), r.stderr
    # no timed round, or a negative or nan render length, was a run of nan medians or no render at all
    for option, value, needle in (("--runs", "0", "runs must be at least 1"),
                                  ("--render-seconds", "-1", "render seconds must be 0"),
                                  ("--render-seconds", "nan", "render seconds must be 0")):
        args = {"--runs": "1", "--render-seconds": "0", option: value}
        r = bench("--levels", "float32", "--batches", "1", "--no-reference", *[x for kv in args.items() for x in kv])
        assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(f"error: {needle}"), r.stderr
        assert "Traceback" not in r.stderr and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_bench_with_the_large_vae_times_it_on_both_sides():
    """`bench --vae large`: the decode (alone, in the frame, in the layer table) is the large (KL)
    VAE's on both sides, with the same weights, and the quantized levels quantize it."""
    import mlx.core as mx

    from mlx_musicviz.benchmark import BenchConfig, markdown, run_benchmark
    from mlx_musicviz.commands.bench import _torch_reference

    config = BenchConfig(model="random:tiny", size=128, levels=("float32", "4bit"), batches=(1,), runs=1,
                         render_seconds=0, layers=True, vae="large")
    reference = _torch_reference(config)
    try:
        result = run_benchmark(config, reference=reference, log=lambda line: None)
    finally:
        reference.close()
    assert result.config["vae"] == "large" and result.reference_info["vae"] == "AutoencoderKL"
    by = {r["level"]: r for r in result.rows}
    assert by["4bit"]["weight_bytes"]["vae_large"] < 0.4 * by["float32"]["weight_bytes"]["vae_large"]
    assert by["4bit"]["frame_psnr"] < by["float32"]["frame_psnr"] == float("inf")
    assert result.reference[0]["mlx_over_pytorch"]["vae"] > 0
    # The VAE layers timed are the large VAE's, call for call (the tiny one has no linear layers).
    pipe = Pipeline.random("tiny")
    expected = layer_shapes(lambda: mx.eval(pipe.vae_large.decode(mx.zeros((1, 16, 16, 4)))))
    timed = [r for r in result.layers if r["component"] == "vae"]
    assert [(r["kind"], tuple(r["input"]), tuple(r["weight"]), r["calls"]) for r in timed] == [
        (s["kind"], s["input"], s["weight"], s["calls"]) for s in expected]
    assert {r["kind"] for r in timed} == {"conv", "linear"} and all(r["pytorch_s"] > 0 for r in timed)
    # the decode's FLOPs: its convolutions and linear layers, plus the mid-block attention's products
    layer_flops_sum = sum(r["calls"] * r["flops"] for r in timed)
    assert layer_flops_sum < result.flops["vae"] == pytest.approx(count_flops(lambda: mx.eval(pipe.vae_large.decode(
        mx.zeros((1, 16, 16, 4))))))
    assert "large VAE" in markdown(result) and "VAE AutoencoderKL" in markdown(result)


def test_bench_times_sdxl_on_both_sides():
    """SDXL's layout (random:tiny-sdxl): both text encoders and the UNet's added conditioning on both
    sides, on the same weights (the PyTorch child saves the checkpoint that MLX converts)."""
    from mlx_musicviz.benchmark import BenchConfig, run_benchmark
    from mlx_musicviz.commands.bench import _torch_reference

    config = BenchConfig(model="random:tiny-sdxl", size=64, levels=("float32",), batches=(1,), runs=1,
                         render_seconds=0, layers=False)
    reference = _torch_reference(config)
    try:
        assert (reference.source / "text_encoder_2").is_dir() and (reference.source / "tokenizer_2").is_dir()
        result = run_benchmark(config, reference=reference, log=lambda line: None)
    finally:
        reference.close()
    ratios = result.reference[0]["mlx_over_pytorch"]
    assert all(ratios[part] > 0 for part in ("text_encoder", "unet", "vae", "frame")), ratios
    assert set(result.rows[0]["weight_bytes"]) >= {"text_encoder", "text_encoder_2", "unet", "vae"}


def test_markdown_names_the_gpu_tf32_and_the_half_precision_peaks():
    """A GPU run's table says which GPU, whether TF32 was on on both sides, and the peaks that the
    half-precision levels' % peak is taken against (a CPU run's names its BLAS instead)."""
    from mlx_musicviz.benchmark import BenchResult, markdown

    machine = {"platform": "Linux", "cpus": 16, "mlx": "0.32.4", "device": "Device(gpu, 0)", "gpu": "NVIDIA H100",
               "tf32": True, "blas": "libblas.so"}
    result = BenchResult(config={"model": "random:tiny", "size": 128, "runs": 1}, machine=machine,
                         matmul_gflops=4e5, matmul_gflops_by={"mlx": 3.8e5, "pytorch": 4e5},
                         matmul_gflops_by_dtype={"float16": 7e5}, flops={"unet": 1e9},
                         reference_info={"torch": "2.11.0", "threads": 16, "blas_libraries": [], "device": "cuda",
                                         "device_name": "NVIDIA H100", "tf32": True})
    text = markdown(result)
    assert "on NVIDIA H100 (TF32 on)" in text and "libblas.so" not in text.splitlines()[0]
    assert "half-precision matmul peaks (mlx; those levels' % peak): float16 700000 GFLOP/s" in text
    assert "on NVIDIA H100, TF32 on" in text  # the PyTorch side's line
    cpu = dict(machine, device="Device(cpu, 0)", gpu=None, tf32=False)
    text = markdown(BenchResult(config=result.config, machine=cpu, matmul_gflops=200.0, matmul_gflops_by={"mlx": 200.0},
                                flops={"unet": 1e9}))
    assert "Device(cpu, 0), BLAS: libblas.so" in text and "half-precision" not in text and "TF32" not in text


def test_levels_may_be_compiled_and_bad_ones_are_one_line():
    from mlx_musicviz.benchmark import BenchConfig
    from mlx_musicviz.errors import MusicvizError

    BenchConfig(levels=("float32", "float16+compile", "4bit+compile")).check()
    with pytest.raises(MusicvizError, match="no level to time"):
        BenchConfig(levels=()).check()
    for bad in ("float32+fast", "float16+compile+compile", "8bit+"):
        with pytest.raises(MusicvizError, match="unknown level"):
            BenchConfig(levels=(bad,)).check()


def test_results_json_is_strict_json():
    """The PSNR of identical frames is infinite: results.json writes it as null, not Infinity, which
    strict JSON readers refuse."""
    from mlx_musicviz.benchmark.config import BenchResult

    result = BenchResult(config={}, machine={})
    result.rows = [{"frame_psnr": float("inf"), "rounds_s": {"frame": [0.5, float("nan")]}}]

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    data = json.loads(result.to_json(), parse_constant=refuse)
    assert data["rows"] == [{"frame_psnr": None, "rounds_s": {"frame": [0.5, None]}}]
