"""`render(audio, prompt)`: song + prompt -> MP4, streaming frames in batches with bounded memory.

Per frame the model cost is one UNet call and one VAE decode (with a cadence of N, one UNet call
every N frames); the 13 prompts (base + 12 notes) and the time embedding are encoded once. While
PyAV encodes batch i, mlx computes batch i+1. The video is kept in segments as it goes, so an
interrupted render resumes (`video.SegmentedVideo`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np

from .audio import analyze, short_window
from .checks import check_audio, check_dtype, check_fps, check_inputs, frame_size
from .errors import MusicvizError
from .loading import pipeline_for
from .note_prompts import default_note_prompts
from .pipeline import DEFAULT_MODEL
from .scheduler import check_scheduler
from .sharing import agree, encode_unit, launched_group, share_render, unit_frames
from .video import MAX_CRF, SegmentedVideo, check_video_path, kept_out_of_order, soundtrack
from .walkers import NoiseWalkConfig, NoiseWalker, PromptWalkConfig, PromptWalker

DEMO_AUDIO = Path(__file__).resolve().parent / "data" / "audio" / "sorohanro_-_solo-trumpet-06.ogg"
# A segment of the video is kept (and an interrupted render resumes after it) every 10 s of video
# or every minute of work, whichever comes first.
SEGMENT_VIDEO_SECONDS = 10.0
SEGMENT_WORK_SECONDS = 60.0
RANDOM_WEIGHTS_WARNING = "random weights: the images mean nothing (for trying the pipeline only)"


@dataclass
class RenderResult:
    output: Path
    frames: int
    fps: float
    duration: float  # seconds of audio rendered
    times: dict = field(default_factory=dict)  # stage -> seconds: analysis, load, prompts, model, encode, total
    peak_memory: int = 0  # bytes: mlx peak memory during the frame loop
    peak_rss: int = 0  # bytes: the process's peak resident size (whole run)
    warnings: list = field(default_factory=list)
    keyframes: int = 0  # frames the UNet generates for the video (all of them unless cadence > 1)
    resumed: int = 0  # frames kept from an interrupted run of the same render


def make_walkers(features, pipe, embeds: mx.array, n_bases: int, size, seed: int = 0,
                 noise: NoiseWalkConfig | None = None, mode: str = "focus") -> tuple[NoiseWalker, PromptWalker]:
    """The noise walk over the latents of images of `size` (see `frame_size`) and the prompt walk over
    `embeds` (the first `n_bases` are base prompts, the rest the 12 note prompts)."""
    width, height = frame_size(size)
    _, h, w, c = pipe.latent_shape(height, width)
    noise_walk = NoiseWalker(features, (h, w, c), seed, noise)
    prompt_walk = PromptWalker(features, embeds[:n_bases], embeds[n_bases:], PromptWalkConfig(mode=mode))
    return noise_walk, prompt_walk


def keyframe_indices(n_frames: int, cadence: int = 1) -> np.ndarray:
    """The frames the UNet generates when it runs on every `cadence`-th frame: 0, cadence,
    2 * cadence, ... and always the last one, so that every other frame lies between two keyframes."""
    keys = np.arange(0, n_frames, cadence)
    if n_frames and keys[-1] != n_frames - 1:
        keys = np.append(keys, n_frames - 1)
    return keys


def denoised_latents(pipe, noise_walk: NoiseWalker, prompt_walk: PromptWalker, n_frames: int, batch_size: int,
                     cadence: int = 1, first_frame: int = 0):
    """Yield (frames, latents), in frame order and at most `batch_size` frames at a time: the one-step
    latents of every frame, as lazy mlx arrays for the VAE to decode.

    With cadence N > 1 the UNet runs on the keyframes only (`keyframe_indices`, batch_size keyframes a
    call), and frame f between keyframes a < f < b gets (1 - t) * x0[a] + t * x0[b], t = (f - a) / (b - a):
    N times fewer UNet calls, and the motion between keyframes becomes linear. Only one batch of
    keyframes is held at a time. first_frame: start there (a resumed render), from the keyframe at
    or before it.
    """
    if first_frame >= n_frames:  # every frame is kept: nothing to make
        return
    keys = keyframe_indices(n_frames, cadence)
    prev_key = prev_x0 = None
    # From the keyframe at or before first_frame: frames before first_frame are blended from it, never yielded.
    for i in range(np.searchsorted(keys, first_frame, side="right") - 1, len(keys), batch_size):
        batch = keys[i:i + batch_size]
        x0 = pipe.denoise(noise_walk.latents(batch), prompt_walk.embeddings(batch))
        if cadence == 1:  # every frame is a keyframe, so the first batch starts at first_frame itself
            yield batch, x0
            continue
        known = batch if prev_key is None else np.concatenate([[prev_key], batch])
        known_x0 = x0 if prev_x0 is None else mx.concatenate([prev_x0, x0])
        first = max(first_frame, batch[0] if prev_key is None else prev_key + 1)
        for j in range(first, int(batch[-1]) + 1, batch_size):
            frames = np.arange(j, min(j + batch_size, int(batch[-1]) + 1))
            a = np.searchsorted(known, frames, side="right") - 1  # the keyframe at or before each frame
            b = np.minimum(a + 1, len(known) - 1)
            span = np.maximum(known[b] - known[a], 1)
            t = mx.array(((frames - known[a]) / span).astype(np.float32))[:, None, None, None].astype(x0.dtype)
            # At a keyframe t = 0 and the sum is exactly its own x0.
            yield frames, (1 - t) * known_x0[mx.array(a)] + t * known_x0[mx.array(b)]
        prev_key, prev_x0 = int(batch[-1]), x0[-1:]


def default_output(audio) -> str:
    """The video's name when none is given: "<song name>.mp4" (or "<song name>-musicviz.mp4" for a song that
    is itself that .mp4), "musicviz.mp4" for samples."""
    stem = Path(audio).stem if isinstance(audio, (str, os.PathLike)) else "musicviz"
    return f"{stem}-musicviz.mp4" if same_file(f"{stem}.mp4", audio) else f"{stem}.mp4"


def same_file(output, audio) -> bool:
    """Whether `output` names the file `audio` (a path) is read from."""
    if not isinstance(audio, (str, os.PathLike)):
        return False
    try:
        return Path(output).expanduser().resolve() == Path(audio).expanduser().resolve()
    except OSError:
        return False


def render_fingerprint(audio, pipe, **settings) -> dict:
    """Everything a render's frames depend on, for a resumed render to check against: the audio (a
    file's path, size and modification time, or a hash of the samples), the model, the settings."""
    from . import __version__

    if isinstance(audio, (str, os.PathLike)):
        stat = Path(audio).stat()
        source = {"path": str(Path(audio).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    else:
        samples = np.ascontiguousarray(np.asarray(audio[0], dtype=np.float32))
        source = {"sha256": hashlib.sha256(samples.tobytes()).hexdigest(), "shape": samples.shape, "rate": int(audio[1])}
    model = {"record": pipe.record, "folder": str(pipe.folder), "dtype": str(pipe.dtype)}
    return {"version": __version__, "audio": source, "model": model, **settings}


def render(audio, prompt: str, *, output=None, note_prompts=None, section_prompts=None, model=DEFAULT_MODEL,
           fps: float = 30, seed: int = 0, size: int | tuple[int, int] | str = 512, start: float | None = None,
           duration: float | None = None, mode: str = "focus", batch_size: int = 2, crf: int = 18,
           vae: str = "auto", noise: NoiseWalkConfig | None = None, cadence: int = 1, resume: bool = True,
           progress=None, loras=(), scheduler: str | None = None, steps: int = 1, dtype=None,
           pipeline=None) -> RenderResult:
    """Render a music video of `audio` (a path or a (samples, sample_rate) pair) driven by `prompt`.

    output: the video's path, ending in .mp4, .m4v or .mov (H.264 with AAC audio); default
        "<song name>.mp4".
    fps: frames per second, 1 to 240.
    size: frame width and height in pixels: 512 (square), (768, 448) or "768x448"; multiples of 64,
        at most 1024x1024 pixels.
    note_prompts: 12 prompts (C..B); default: the prompt in Scriabin's colour for each note.
    section_prompts: base prompts for the song's sections in turn (crossfaded at boundaries).
    cadence: run the UNet on every `cadence`-th frame only and blend the latents between (see
        `denoised_latents`): about `cadence` times fewer UNet calls; linear motion between keyframes,
        softer beats.
    resume: continue an interrupted render of the same song, model and settings from the segments it
        kept (see `video.SegmentedVideo`); False starts over.
    progress: called as progress(done_frames, total_frames) after every batch.
    loras: [(path, scale), ...] LoRA files fused into the model (see `load_pipeline`).
    scheduler: another scheduler's one step than the model's, e.g. "lcm" or "tcd:800" (see `load_pipeline`);
        steps: LCM's or Euler's number of steps (each a UNet call). dtype: the compute dtype (None: the
        device's, float16 on a GPU and float32 on the CPU; see `load_pipeline`).
    pipeline: a loaded Pipeline to render with instead of loading `model` (it then takes no loras,
        scheduler, steps or dtype: give those to `load_pipeline`).
    Raises MusicvizError with a one-line message on bad input; never leaves a partial file at `output`
    (an interrupted render keeps its finished segments in a hidden folder beside it, and says so in a
    note on the exception).
    """
    group = launched_group()  # several processes under mlx.launch share the render
    try:
        t0 = time.perf_counter()
        times = {}
        check_audio(audio)
        check_fps(fps)
        if progress is not None and not callable(progress):
            raise MusicvizError(f"progress must be a function called as progress(done, total), not {progress!r:.40}")
        width, height = check_inputs(prompt, seed, size, batch_size, note_prompts, section_prompts)
        if not 0 <= crf <= MAX_CRF:
            raise MusicvizError(f"crf must be from 0 (lossless) to {MAX_CRF}, got {crf}")
        check_scheduler(scheduler, steps)
        check_dtype(dtype)
        if not isinstance(cadence, (int, np.integer)) or cadence < 1:
            raise MusicvizError(f"cadence must be a whole number of frames, 1 or more, got {cadence!r}")
        output = default_output(audio) if output is None else output
        if same_file(output, audio):
            raise MusicvizError(f"the output {output} is the song itself: name another output")
        output = check_video_path(output) if group is None or group.rank() == 0 else Path(output)

        features = analyze(audio, fps=fps, start=start, duration=duration)
        times["analysis"] = time.perf_counter() - t0

        t = time.perf_counter()
        pipe = pipeline_for(pipeline, model, loras, scheduler, steps, dtype)
        vae = pipe.vae_name(vae)  # "auto" named, so that a resume matches what the frames were made with
        pipe.vae_for(vae)  # a model without that VAE says so now, not after the first batch
        times["load"] = time.perf_counter() - t

        t = time.perf_counter()
        warnings = [RANDOM_WEIGHTS_WARNING] if pipe.is_random else []
        if short_window(features, duration):
            warnings.append(short_window(features, duration))
        bases = list(section_prompts) if section_prompts else [prompt]
        notes = list(note_prompts) if note_prompts else default_note_prompts(prompt)
        limit = pipe.tokenizer.model_max_length - 2
        cut = [p for p in bases + notes if pipe.tokenizer.count_tokens(p) > limit]
        if cut:
            warnings.append(f"{len(cut)} of the {len(bases + notes)} prompts are longer than {limit} tokens and "
                            f"truncated: {cut[0][:40]!r}...")
        embeds = pipe.encode_prompt(bases + notes)
        mx.eval(embeds)
        noise_walk, prompt_walk = make_walkers(features, pipe, embeds, len(bases), size, seed, noise, mode)
        times["prompts"] = time.perf_counter() - t

        n = features.n_frames
        noise = noise or NoiseWalkConfig()
        fingerprint = render_fingerprint(
            audio, pipe, prompts=bases + notes, fps=fps, seed=int(seed), size=[width, height], start=start,
            duration=duration, mode=mode, batch_size=batch_size, vae=vae, noise=dataclasses.asdict(noise), cadence=cadence)

    except Exception as e:  # every process stops, with the first one's reason
        if group is not None:
            agree(group, str(e) if isinstance(e, MusicvizError) else f"{type(e).__name__}: {e}")
        raise
    if group is None and kept_out_of_order(output):  # a shared render's units: one process finishes them
        group = mx.distributed.init(strict=False)
    if group is not None:
        agree(group, None)
        return _render_shared(group, pipe, noise_walk, prompt_walk, features, output, (width, height), fps, crf,
                              fingerprint, resume, batch_size, cadence, vae, (audio, start, duration), progress,
                              warnings, times, t0)

    model_time = encode_time = 0.0
    mx.reset_peak_memory()
    with SegmentedVideo(output, width, height, fps, crf, fingerprint, resume, round(fps * SEGMENT_VIDEO_SECONDS),
                        SEGMENT_WORK_SECONDS, total_frames=n) as video:
        if video.discarded:
            warnings.append(f"{video.discarded} frames kept from an earlier render of {output.name} with other "
                            "settings were thrown away")
        chunks = denoised_latents(pipe, noise_walk, prompt_walk, n, batch_size, cadence, video.frames_done)

        def next_images():
            """Queue the next chunk's decode (mlx computes it while PyAV encodes the current one)."""
            chunk = next(chunks, None)
            if chunk is None:
                return None
            frames, latents = chunk
            images = pipe.decode(latents, vae)
            mx.async_eval(images)
            return frames, images

        t = time.perf_counter()
        pending = next_images()
        while pending is not None:
            frames, current = pending
            pending = next_images()
            t_wait = time.perf_counter()
            images = np.array(current)
            model_time += time.perf_counter() - t_wait
            t_enc = time.perf_counter()
            video.write(images)
            encode_time += time.perf_counter() - t_enc
            if progress is not None:
                progress(int(frames[-1]) + 1, n)
        loop = time.perf_counter() - t
        t = time.perf_counter()
        samples, rate = soundtrack(audio, start, duration)
        result_path = video.finish(samples, rate)  # the segments and the song into one MP4
        join_time = time.perf_counter() - t
    times["model"] = loop - encode_time
    times["encode"] = encode_time + join_time
    times["total"] = time.perf_counter() - t0
    return RenderResult(
        output=result_path, frames=n, fps=float(fps), duration=features.duration, times=times,
        peak_memory=int(mx.get_peak_memory()),
        peak_rss=int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, warnings=warnings,
        keyframes=len(keyframe_indices(n, cadence)), resumed=video.resumed,
    )


def _render_shared(group, pipe, noise_walk, prompt_walk, features, output, size, fps, crf, fingerprint, resume,
                   batch_size, cadence, vae, song, progress, warnings, times, t0) -> RenderResult:
    """`render`'s frames made by every process of `group` in units (see `sharing`); rank 0 keeps them
    beside `output` and joins them with the song."""
    import contextlib

    n, unit = features.n_frames, unit_frames(fps, batch_size, cadence, SEGMENT_VIDEO_SECONDS)

    def make_unit(first: int) -> np.ndarray:
        images = []
        for frames, latents in denoised_latents(pipe, noise_walk, prompt_walk, n, batch_size, cadence, first):
            inside = int(np.sum(frames < first + unit))
            if inside:
                images.append(np.array(pipe.decode(latents[:inside], vae)))
            if inside < len(frames):
                break
        return np.concatenate(images)

    mx.reset_peak_memory()
    rank0 = group.rank() == 0
    video = (SegmentedVideo(output, *size, fps, crf, fingerprint, resume, unit, float("inf"), total_frames=n,
                            unit_frames=unit) if rank0 else contextlib.nullcontext())
    with video:
        if rank0 and video.discarded:
            warnings.append(f"{video.discarded} frames kept from an earlier render of {output.name} with other "
                            "settings were thrown away")
        resumed = video.frames_done if rank0 else 0
        shared = share_render(group, video if rank0 else None, make_unit,
                              lambda images: encode_unit(images, *size, fps, crf), n, progress if rank0 else None)
        t = time.perf_counter()
        if rank0:
            output = video.finish(*soundtrack(*song))
        join_time = time.perf_counter() - t
    times.update(model=shared["model"], encode=shared["encode"] + join_time, units=shared["units"],
                 waiting=shared["waiting"], transfer=shared["transfer"], moved=shared["bytes"],
                 total=time.perf_counter() - t0)
    return RenderResult(
        output=output, frames=n, fps=float(fps), duration=features.duration, times=times,
        peak_memory=int(mx.get_peak_memory()),
        peak_rss=int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, warnings=warnings,
        keyframes=len(keyframe_indices(n, cadence)), resumed=resumed,
    )
