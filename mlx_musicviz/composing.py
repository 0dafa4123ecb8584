"""`compose`: audio from a prompt, through mel-spectrogram tiles made by a one-step image model (with a
LoRA trained on tiles, see `training`), joined and inverted as `spec2audio` does.

Each tile continues the one before: its first `overlap` columns are held to the previous tile's last
ones. The UNet starts there from the same noise (so it draws similar content), its denoised latents are
the previous tile's, fading to its own across the overlap, and the decoded columns fade the same way. A
tile is n_mels x tile_width pixels of the preset (512 x 512: 5.9 s at the default preset's hop).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import mlx.core as mx
import numpy as np

from .checks import check_dtype
from .errors import MusicvizError
from .scheduler import check_scheduler
from .spectrogram import PRESETS, MelParams, check_audio_output, from_unit, mel_to_audio, write_audio

MAX_SECONDS = 600.0


@dataclasses.dataclass
class ComposeResult:
    output: Path
    seconds: float
    tiles: int
    seams: list[tuple[float, float]]  # (start, end) in seconds of each fade from one tile to the next
    image: np.ndarray  # the joined spectrogram's values (n_mels, columns) in [0, 1], low frequencies first


def _ramp(n: int) -> np.ndarray:
    """Weights of the new tile across an overlap of n columns: 0 at its first column (held), (n - 1) / n
    at its last."""
    return np.arange(n, dtype=np.float32) / n


def tile_values(image: np.ndarray, p: MelParams) -> np.ndarray:
    """A generated uint8 RGB tile (H, W, 3) -> values (n_mels, W) in [0, 1], low frequencies first, as
    `spectrogram.read_image` reads a grey tile."""
    values = image.astype(np.float64).mean(axis=-1)[::-1] / 255.0
    return 1.0 - values if p.inverted else values


def generate_latents(pipe, prompt: str, count: int, p: MelParams, overlap: int, seed: int = 0):
    """The denoised latents (1, n_mels / 8, tile_width / 8, C) of `count` consecutive tiles, each held to
    the one before over its first `overlap` pixel columns (a multiple of 8)."""
    latent_h, latent_w, lo = p.n_mels // 8, p.tile_width // 8, overlap // 8
    embeds = pipe.encode_prompt(prompt)
    rng = np.random.default_rng(seed)
    fade = mx.array(_ramp(lo))[None, None, :, None]
    noise = latents = None
    for _ in range(count):
        fresh = rng.standard_normal((1, latent_h, latent_w, pipe.latent_channels)).astype(np.float32)
        if noise is not None and lo:
            fresh[:, :, :lo] = noise[:, :, -lo:]  # the same noise where the tiles overlap
        new = pipe.denoise(mx.array(fresh), embeds)
        if latents is not None and lo:
            held = latents[:, :, -lo:] * (1 - fade) + new[:, :, :lo] * fade
            new = mx.concatenate([held, new[:, :, lo:]], axis=2)
        noise, latents = fresh, new
        yield new


def generate_tiles(pipe, prompt: str, count: int, p: MelParams, overlap: int, seed: int = 0, progress=None):
    """`count` consecutive uint8 tiles (n_mels x tile_width x 3) made from `generate_latents`."""
    for k, latents in enumerate(generate_latents(pipe, prompt, count, p, overlap, seed)):
        yield np.array(pipe.decode(latents))[0]
        if progress is not None:
            progress(k + 1, count)


def join_tiles(tiles: list[np.ndarray], overlap: int) -> tuple[np.ndarray, list[int]]:
    """Values (n_mels, W) of consecutive tiles -> one (n_mels, columns) and the columns where each later
    tile starts; over each overlap the columns fade from the earlier tile to the later."""
    out, starts = tiles[0], []
    for tile in tiles[1:]:
        if overlap:
            w = _ramp(overlap)
            mixed = out[:, -overlap:] * (1 - w) + tile[:, :overlap] * w
            out = np.concatenate([out[:, :-overlap], mixed, tile[:, overlap:]], axis=1)
        else:
            out = np.concatenate([out, tile], axis=1)
        starts.append(out.shape[1] - tile.shape[1])
    return out, starts


def check_compose(seconds: float, preset: str, overlap: int, iterations: int) -> MelParams:
    if preset not in PRESETS:
        raise MusicvizError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    p = PRESETS[preset]
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise MusicvizError(f"seconds must be a number, got {type(seconds).__name__} {seconds!r:.40}")
    shortest = p.n_fft / p.sample_rate  # one STFT window: less has no spectrum to invert
    if not shortest <= seconds <= MAX_SECONDS:
        raise MusicvizError(f"seconds must be at least {shortest:.2f} (one {p.n_fft}-sample window) and at most "
                            f"{MAX_SECONDS:.0f}, got {seconds}")
    if not isinstance(overlap, int) or overlap < 0 or overlap % 8 or overlap > p.tile_width // 2:
        raise MusicvizError(f"the overlap must be a multiple of 8 pixel columns from 0 to {p.tile_width // 2}, got {overlap}")
    if iterations < 1:
        raise MusicvizError("iterations must be at least 1")
    return p


def compose(prompt: str, output, model: str = "IDKiro/sdxs-512-0.9", *, seconds: float = 30.0,
            preset: str = "default", seed: int = 0, overlap: int = 64, iterations: int = 64, loras=(),
            scheduler: str | None = None, steps: int = 1, dtype=None, pipeline=None, progress=None) -> ComposeResult:
    """Compose `seconds` of audio from `prompt` and write it to `output` (.wav or .flac), peak at -1 dBFS
    (generated tiles record no level).

    preset: the tiles' mel parameters ("default" or "riffusion"; a LoRA should be trained on tiles of
        the same preset). overlap: pixel columns each tile shares with the one before (a multiple of 8).
    iterations: Griffin-Lim rounds. loras, scheduler, steps, dtype: LoRA files fused into the model, another
        scheduler (LCM or Euler in `steps` steps) and the compute dtype, as `load_pipeline` takes them.
    progress: called as progress(done_tiles, tiles).
    """
    from .loading import pipeline_for

    if not isinstance(prompt, str) or not prompt.strip():
        raise MusicvizError("the prompt is empty; describe what to hear")
    p = check_compose(seconds, preset, overlap, iterations)
    check_audio_output(output)
    columns = math.ceil(seconds * p.sample_rate / p.hop_length) + 1
    count = 1 + max(0, math.ceil((columns - p.tile_width) / (p.tile_width - overlap)))
    check_scheduler(scheduler, steps)
    check_dtype(dtype)
    pipe = pipeline_for(pipeline, model, loras, scheduler, steps, dtype)
    pipe.latent_shape(p.n_mels, p.tile_width)  # a tile the model can make
    tiles = [tile_values(t, p) for t in generate_tiles(pipe, prompt, count, p, overlap, seed, progress)]
    image, starts = join_tiles(tiles, overlap)
    image = image[:, :columns]
    p = dataclasses.replace(p, ref_db=0.0) if p.scale == "db" else p
    y = mel_to_audio(from_unit(image, p), p, iterations)[: round(seconds * p.sample_rate)]
    peak = float(np.abs(y).max())
    y = (y * (10 ** (-1 / 20) / peak) if peak > 0 else y).astype(np.float32)
    write_audio(Path(output), y, p.sample_rate)
    column = p.hop_length / p.sample_rate  # seconds
    seams = [(s * column, (s + overlap) * column) for s in starts if s < columns]
    return ComposeResult(Path(output), len(y) / p.sample_rate, count, seams, image)


__all__ = ["ComposeResult", "compose", "generate_latents", "generate_tiles", "join_tiles", "seam_flux"]


def seam_flux(y: np.ndarray, p: MelParams, seams: list[tuple[float, float]], margin: float = 0.05) -> tuple[float, float]:
    """Spectral flux of the audio `y` (mean rise in dB over the mel bands from one column to the next)
    over the seams (each (start, end) in seconds, widened by `margin`) and elsewhere: (at the seams,
    within the tiles)."""
    from .spectrogram import mel_magnitude

    mel = mel_magnitude(y, p)
    db = 20 * np.log10(np.maximum(mel, 1e-5 * mel.max()))
    flux = np.maximum(np.diff(db, axis=1), 0).mean(axis=0)
    times = (np.arange(len(flux)) + 1) * p.hop_length / p.sample_rate
    near = np.zeros(len(flux), bool)
    for start, end in seams:
        near |= (times >= start - margin) & (times <= end + margin)
    return float(flux[near].mean()), float(flux[~near].mean())
