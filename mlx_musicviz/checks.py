"""Checks of what users give render, preview and live (prompt, size, fps, audio, seed, start): each
raises MusicvizError with one line that says what is wrong and what would do."""

from __future__ import annotations

import numbers
import operator
import os

import mlx.core as mx
import numpy as np

from .audio import MAX_FPS, MIN_FPS, is_sample_pair
from .checkpoint_format import DTYPES
from .errors import MusicvizError

# The largest frame: the UNet's self-attention at its first level holds (pixels / 64)^2 float32
# weights a head (1 GiB at 1024x1024; 16 GiB at 2048x2048), and SDXS-512 was trained at 512x512.
MAX_PIXELS = 1024 * 1024


def frame_size(size) -> tuple[int, int]:
    """(width, height) in pixels of the video's frames from `size`: an int (a square), a (width,
    height) pair, or a "WIDTHxHEIGHT" string such as "768x448". Both must be multiples of 64 (the
    UNet halves the 8x-smaller latents three times), at most MAX_PIXELS in all. Raises MusicvizError
    otherwise."""
    if isinstance(size, str):
        parts = size.lower().split("x")
    else:
        parts = list(size) if isinstance(size, (tuple, list)) else [size]
    try:  # operator.index: whole numbers only (numpy's too), no silent rounding of 512.7
        dims = [int(p) if isinstance(p, str) else operator.index(p) for p in parts * (2 if len(parts) == 1 else 1)]
    except (TypeError, ValueError):
        dims = []
    if len(dims) != 2 or min(dims) <= 0 or dims[0] % 64 or dims[1] % 64:
        raise MusicvizError(f"size {size} is not supported: use a multiple of 64 (e.g. 512) or WIDTHxHEIGHT in "
                            "multiples of 64 (e.g. 768x448)")
    if dims[0] * dims[1] > MAX_PIXELS:
        raise MusicvizError(f"size {dims[0]}x{dims[1]} is too large: at most {MAX_PIXELS:,} pixels a frame "
                            "(e.g. 1024x1024 or 1280x768; SDXS-512 was trained at 512x512)")
    return dims[0], dims[1]


def check_dtype(dtype) -> mx.Dtype:
    """The compute dtype `dtype` names: None or "auto" (the device's: `ops.device.default_dtype`), a name
    in DTYPES or one of their mlx dtypes."""
    from .ops.device import default_dtype

    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        return default_dtype()
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if isinstance(dtype, mx.Dtype) and dtype in DTYPES.values():
        return dtype
    raise MusicvizError(f"dtype must be auto, float32, float16 or bfloat16 (or mx.float32, mx.float16, mx.bfloat16), "
                        f"not {dtype!r:.40}")


def dtype_name(dtype: mx.Dtype) -> str:
    """"float16" for mx.float16."""
    return str(dtype).removeprefix("mlx.core.")


def check_prompt(prompt) -> None:
    """Raise MusicvizError unless `prompt` is a string with something in it."""
    if not isinstance(prompt, str):
        raise MusicvizError(f"the prompt must be text (a str), not {type(prompt).__name__}")
    if not prompt.strip():
        raise MusicvizError("the prompt is empty; describe what the video should show")


def check_audio(audio) -> None:
    """Raise MusicvizError unless `audio` is a file's path or a (samples, sample_rate) pair."""
    if isinstance(audio, (str, os.PathLike)) or is_sample_pair(audio):
        return
    given = f"an array of shape {audio.shape}" if isinstance(audio, np.ndarray) else type(audio).__name__
    raise MusicvizError(f"audio must be a file's path or a (samples, sample_rate) pair, not {given}")


def check_fps(fps) -> None:
    """Raise MusicvizError unless `fps` is a number of frames per second from MIN_FPS to MAX_FPS."""
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
        raise MusicvizError(f"fps must be a number (frames per second), not {type(fps).__name__} {fps!r}")
    if not MIN_FPS <= fps <= MAX_FPS:  # nan fails both comparisons
        raise MusicvizError(f"fps must be from {MIN_FPS:g} to {MAX_FPS:g}, got {fps}")


def check_inputs(prompt, seed, size, batch_size: int, note_prompts=None, section_prompts=None) -> tuple[int, int]:
    """Check what render and preview share; return the frames' (width, height). Raises MusicvizError."""
    check_prompt(prompt)
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise MusicvizError(f"seed must be an integer from 0 to 2**64 - 1, got {seed}")
    size = frame_size(size)
    if batch_size < 1:
        raise MusicvizError("batch size must be at least 1")
    if note_prompts is not None and len(note_prompts) != 12:
        raise MusicvizError(f"need 12 note prompts (C to B), got {len(note_prompts)}")
    for kind, given in (("note", note_prompts), ("section", section_prompts)):
        if given is not None and not all(isinstance(p, str) and p.strip() for p in given):
            raise MusicvizError(f"a {kind} prompt is empty; every {kind} prompt must describe something")
    return size
