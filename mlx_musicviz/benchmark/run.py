"""`run_benchmark`: frames per second by precision level, batch size and component.

For each level (float32, float16, bfloat16, 8-bit, 4-bit) and batch size it times, after a
warm-up, the median of `runs` calls of: the text encoder (a batch of prompts), the UNet, the VAE decode
and the whole frame (UNet + decode), and reports frames per second, resident weight bytes, mlx
peak memory, the error against float32 (relative L2 of the UNet output, PSNR of the frame) and
the achieved GFLOP/s against the machine's matmul peak measured in the same run (float32; on a
GPU also the peak of each half-precision level's dtype, which its rows are measured against).

A reference (see benchmarks/torch_reference.py, used when torch and diffusers are installed)
times the same architecture with the same weights in PyTorch, in a process of its own (this one
has OpenBLAS in its global symbol scope, which would take over torch's BLAS calls). The levels
and PyTorch take turns call by call, so each ratio compares times taken in the same stretch of
the run. On a GPU (mlx's CUDA or Metal backend) the reference runs on the GPU too (`reference_device`),
with TF32 allowed exactly when mlx allows it (`tf32_enabled`). This module itself never imports torch.
"""

from __future__ import annotations

import time
import warnings
from functools import partial
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..checkpoint_format import DTYPES
from ..timing import call_seconds
from .config import (
    COMPONENTS,
    PROMPT,
    BenchConfig,
    BenchResult,
    base_level,
    level_peak,
    machine_info,
    matmul_peak,
    on_gpu,
)
from .flops import count_flops
from .interleave import _layer_summary, _paired_ratio, _timing_fields, interleaved_times, time_layers
from .profile import profile_frames


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _pipeline(source, level: str, group_size: int, vae: str = "auto"):
    """The pipeline of a level; a quantized level quantizes what `convert --bits` does by default
    (the text encoders, the UNet and, when it decodes, SDXS's large VAE: tiny VAEs stay float); a
    "+compile" level runs it through mx.compile."""
    from ..loading import load_pipeline

    base = base_level(level)
    if base in DTYPES:
        pipe = load_pipeline(source, dtype=DTYPES[base])
    else:
        pipe = load_pipeline(source)
        large = pipe.vae_name(vae) == "large" and pipe.vae_for(vae) is not pipe.vae
        pipe.quantize(int(base.removesuffix("bit")), group_size,
                      components=(*pipe.text_encoders(), "unet", *(("vae_large",) if large else ())))
    pipe.compiled = level != base
    return pipe


def run_benchmark(config: BenchConfig, reference=None, log=print) -> BenchResult:
    """Run the benchmark. `reference` (benchmarks/torch_reference.py's TorchReference): `source`, a
    model mlx-musicviz can load with the reference's weights; `time(component, batch)`, seconds of
    one PyTorch call, asked for in turn with the MLX calls; `matmul_gflops`, its own matmul rate;
    `info`, where it ran.

    Every level's pipeline is loaded at once so that the levels (and PyTorch) take turns, call by
    call (see `interleaved_times`): times are medians of `runs` rounds, and the ratios (MLX over
    PyTorch, a level over float32) medians of the rounds' ratios. A level's peak memory is its
    weights plus the most its frame call allocated on top of what was already in use."""
    config.check()
    result = BenchResult(config=dict(config.__dict__), machine=machine_info())
    result.matmul_gflops_by["mlx"] = matmul_peak()
    if reference is not None:
        result.matmul_gflops_by["pytorch"] = reference.matmul_gflops
        result.reference_info = reference.info
    result.matmul_gflops = max(result.matmul_gflops_by.values())
    log(f"float32 matmul peak: {result.matmul_gflops:.0f} GFLOP/s ("
        + ", ".join(f"{k} {v:.0f}" for k, v in result.matmul_gflops_by.items())
        + (f"; on {result.machine['gpu']}, TF32 {'on' if result.machine['tf32'] else 'off'})" if on_gpu()
           else f"; mlx's BLAS {result.machine['blas']})"))
    if on_gpu():  # half precision has its own, much higher peak there (on the CPU it is float32's at best)
        for level in config.levels:
            base = base_level(level)
            if base in DTYPES and base != "float32" and base not in result.matmul_gflops_by_dtype:
                result.matmul_gflops_by_dtype[base] = matmul_peak(dtype=DTYPES[base])
                log(f"{base} matmul peak: {result.matmul_gflops_by_dtype[base]:.0f} GFLOP/s (mlx)")
    source = config.model
    if reference is not None:  # convert once beside the reference's files (removed with them), not into the cache
        from ..convert import convert_checkpoint

        source = convert_checkpoint(reference.source, Path(reference.source).parent / "mlx")

    pipes, embeddings = {}, {}
    for level in config.levels:
        with warnings.catch_warnings(record=True) as caught:  # half precision on the CPU: logged as one line
            warnings.simplefilter("always")
            pipe = pipes[level] = _pipeline(source, level, config.group_size, config.vae)
        for warning in caught:
            log(f"warning: {level}: {warning.message}")
        embeddings[level] = pipe.encode_prompt(PROMPT)
        mx.eval(embeddings[level])
        if not result.flops:
            emb, latent = embeddings[level], pipe.latent_shape(config.size, config.size)[1:]
            one = mx.random.normal((1, *latent), key=mx.random.key(0))
            noise = pipe.predict_noise(one.astype(pipe.dtype), emb.astype(pipe.dtype))
            result.flops = {
                "unet": count_flops(lambda: mx.eval(pipe.predict_noise(one, emb))),
                "vae": count_flops(lambda: mx.eval(pipe.vae_for(config.vae).decode(noise))),
                "text_encoder": count_flops(lambda: mx.eval(pipe.encode_prompt(PROMPT))),
            }
            log("GFLOP per image: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in result.flops.items()))

    for batch in config.batches:
        rows, outputs, sides = {}, {}, {}
        for level, pipe in pipes.items():
            latents = mx.random.normal((batch, *pipe.latent_shape(config.size, config.size)[1:]), key=mx.random.key(1))
            embs = mx.broadcast_to(embeddings[level], (batch, *embeddings[level].shape[1:]))
            prompts = [PROMPT] * batch
            # pipe.denoise's two steps, kept apart: the UNet output is compared with float32's too
            sample = pipe.scheduler.scale_noise(latents.astype(pipe.dtype))
            noise = pipe.predict_noise(sample, embs.astype(pipe.dtype))
            denoised = pipe.scheduler.step(noise, sample)
            image = pipe.decode(denoised, config.vae)
            mx.eval(latents, embs, noise, denoised, image)
            outputs[level] = (np.array(noise.astype(mx.float32)), np.array(image))
            noise = image = None
            in_use = mx.get_active_memory()
            mx.reset_peak_memory()
            mx.eval(pipe.generate(latents, embs, config.vae))
            weights = pipe.weight_bytes()
            rows[level] = {"level": level, "batch": batch, "weight_bytes": weights,
                           "peak_memory": mx.get_peak_memory() - in_use + sum(weights.values())}
            sides[level] = {
                "text_encoder": partial(call_seconds, lambda pipe=pipe, prompts=prompts: mx.eval(pipe.encode_prompt(prompts))),
                "unet": partial(call_seconds, lambda pipe=pipe, latents=latents, embs=embs: mx.eval(pipe.denoise(latents, embs))),
                "vae": partial(call_seconds, lambda pipe=pipe, denoised=denoised: mx.eval(pipe.decode(denoised, config.vae))),
                "frame": partial(call_seconds,
                                 lambda pipe=pipe, latents=latents, embs=embs: mx.eval(pipe.generate(latents, embs, config.vae))),
            }
        if reference is not None:
            sides["pytorch-float32"] = {c: (lambda c=c, b=batch: reference.time(c, b)) for c in COMPONENTS}
        times = interleaved_times(sides, config.runs)

        for level, row in rows.items():
            row.update(_timing_fields(times[level], batch, result, level_peak(result, level)))
            if "float32" in outputs:
                (ref_noise, ref_image), (noise, image) = outputs["float32"], outputs[level]
                row["unet_rel_l2"] = float(np.linalg.norm(noise - ref_noise) / np.linalg.norm(ref_noise))
                row["frame_psnr"] = _psnr(image, ref_image)
                if level != "float32":
                    row["over_float32"] = {c: _paired_ratio(times[level][c], times["float32"][c]) for c in COMPONENTS}
            result.rows.append(row)
            log(f"{level:>8} b{batch}: frame {row['frame_s']:.3f} s ({row['fps']:.2f} fps), UNet {row['unet_s']:.3f} s "
                f"({row['unet_gflops']:.0f} GFLOP/s, {row['unet_peak_fraction']:.0%} of peak), VAE {row['vae_s']:.3f} s, "
                f"weights {sum(row['weight_bytes'].values()) / 2**20:.0f} MiB"
                + (f"; frame {row['over_float32']['frame']:.2f}x float32" if "over_float32" in row else ""))

        if reference is not None:
            theirs = times["pytorch-float32"]
            row = {"level": "pytorch-float32", "batch": batch, **_timing_fields(theirs, batch, result, result.matmul_gflops)}
            if "float32" in times:
                row["mlx_over_pytorch"] = {c: _paired_ratio(times["float32"][c], theirs[c]) for c in COMPONENTS}
            result.reference.append(row)
            log(f" pytorch b{batch}: frame {row['frame_s']:.3f} s, UNet {row['unet_s']:.3f} s "
                f"({row['unet_gflops']:.0f} GFLOP/s, {row['unet_peak_fraction']:.0%} of peak), VAE {row['vae_s']:.3f} s"
                + (f"; MLX/PyTorch frame {row['mlx_over_pytorch']['frame']:.2f}x" if "mlx_over_pytorch" in row else ""))

        if (config.layers or config.profile) and "float32" in pipes:
            pipe = pipes["float32"]
            latents = mx.random.normal((batch, *pipe.latent_shape(config.size, config.size)[1:]), key=mx.random.key(1))
            embs = mx.broadcast_to(embeddings["float32"], (batch, *embeddings["float32"].shape[1:]))
            if config.layers:
                layers = time_layers(pipe, latents, embs, config.runs, reference, config.vae)
                result.layers += layers
                for line in _layer_summary(layers):
                    log(f" layers b{batch}: " + line)
            if config.profile:
                profile = profile_frames(pipe, latents, embs, config.runs, reference, config.vae)
                result.profile += profile
                log(f" profile b{batch}, s an image: " + ", ".join(
                    f"{r['kind']} {r['mlx_s']:.3f}" + (f" (PyTorch {r['pytorch_s']:.3f})" if "pytorch_s" in r else "")
                    for r in profile))
    pipes = embeddings = sides = pipe = None  # free the levels' weights before the render loads its own

    if config.render_seconds > 0:
        result.render = bench_render(source, config)
        r = result.render
        log(f"render {r['seconds']:.0f} s of audio: {r['frames']} frames in {r['total_s']:.1f} s; outside the model "
            f"{r['overhead_fraction']:.1%} (" + ", ".join(f"{k} {v:.2f} s" for k, v in r["times"].items()) + ")")
    if config.render_seconds > 0:
        from ..rendering import DEMO_AUDIO
        from .startup import bench_startup, startup_summary

        result.startup = bench_startup(config.audio or DEMO_AUDIO, config.render_seconds)
        log("start-up: " + startup_summary(result.startup))
    if config.live_seconds > 0:
        from ..loading import load_pipeline
        from ..rendering import DEMO_AUDIO
        from .live import bench_live

        result.live = bench_live(load_pipeline(source), config.audio or DEMO_AUDIO, config.size, config.live_fps,
                                 config.live_seconds)
        log("live: " + live_summary(result.live))
    return result


def live_summary(r: dict) -> str:
    """One line of the live scenario's figures."""
    return (f"{r['size'][0]}x{r['size'][1]} at {r['fps']:g} fps: {r['displayed_fps']:.1f} frames shown a second over "
            f"{r['played_s']:.1f} s played (stride {r['stride']}, cadence {r['cadence']}), sync p95 "
            f"{r['sync_p95_ms']:.0f} ms, largest gap {r['max_gap_ms']:.0f} ms, {r['stalls']} stalls, playback after "
            f"{r['waited_s'] or 0:.1f} s, chunk latency {r['chunk_latency_ms'] or 0:.0f} ms")


def bench_render(source, config: BenchConfig) -> dict:
    """End-to-end render of a clip: where the time goes, and the share outside the model.

    The walks are evaluated lazily inside the render's model graph, so they are timed here once
    more on their own (same features, same batches) and taken out of "model" into "walks".
    """
    import tempfile

    from ..audio import analyze
    from ..loading import load_pipeline
    from ..rendering import DEMO_AUDIO, make_walkers, render

    pipe = load_pipeline(source)
    audio, fps, batch = config.audio or DEMO_AUDIO, 24, max(config.batches)
    with tempfile.TemporaryDirectory() as tmp:
        res = render(audio, PROMPT, output=Path(tmp) / "bench.mp4", pipeline=pipe,
                     size=config.size, fps=fps, duration=config.render_seconds, batch_size=batch, vae=config.vae)
    features = analyze(audio, fps=fps, duration=config.render_seconds)
    embeds = mx.zeros((13, *pipe.encode_prompt(PROMPT).shape[1:]))  # (S + 12 notes, tokens, width)
    noise_walk, prompt_walk = make_walkers(features, pipe, embeds, 1, config.size)
    t = time.perf_counter()
    for start in range(0, features.n_frames, batch):
        frames = np.arange(start, min(start + batch, features.n_frames))
        mx.eval(noise_walk.latents(frames), prompt_walk.embeddings(frames))
    walks = time.perf_counter() - t
    times = {k: v for k, v in res.times.items() if k != "total"}
    times["model"] = res.times["model"] - walks
    times["walks"] = walks
    outside = res.times["total"] - times["model"] - res.times.get("load", 0.0)
    return {"seconds": res.duration, "frames": res.frames, "total_s": res.times["total"], "times": times,
            "overhead_fraction": outside / max(res.times["total"] - res.times.get("load", 0.0), 1e-9),
            "fps": res.frames / max(res.times["model"] + res.times["encode"], 1e-9)}
