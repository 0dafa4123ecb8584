"""The soundtrack plays in step with the frames: the AAC encoder's priming samples are declared (not
played), and the audio lasts as long as the video."""

import av
import numpy as np
import pytest

from mlx_musicviz import render
from mlx_musicviz.pipeline import Pipeline

RATE = 44100
AAC_FRAME = 1024  # samples


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.random("tiny")


def clicks(seconds: float = 1.2) -> np.ndarray:
    """Mono bursts of noise at uneven times: one clear peak of cross-correlation, at the true offset."""
    rng = np.random.default_rng(7)
    y = np.zeros(int(seconds * RATE), np.float32)
    for t in (0.0, 0.13, 0.41, 0.52, 0.8, 1.07):
        i = int(t * RATE)
        y[i:i + 300] = 0.5 * rng.standard_normal(300)
    return y


def decoded(path) -> tuple[np.ndarray, int]:
    """(first channel of the soundtrack as PyAV decodes it, edit lists applied; video frames)."""
    with av.open(str(path)) as c:
        assert c.streams.audio[0].sample_rate == RATE
        sound = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)[0]
    with av.open(str(path)) as c:
        frames = sum(1 for _ in c.decode(video=0))
    return sound, frames


def offset(sound: np.ndarray, source: np.ndarray, reach: int = 2 * AAC_FRAME, n: int = RATE // 2) -> int:
    """Samples by which `sound` lags `source` (negative: leads), from their first `n` samples."""
    padded = np.pad(sound, (reach, 0))[:n + 2 * reach]
    return int(np.argmax(np.correlate(padded, source[:n], "valid"))) - reach


@pytest.mark.parametrize("suffix, start", [(".mp4", None), (".mp4", 0.37), (".mov", 0.37)])
def test_first_sample_plays_with_first_frame_and_audio_ends_with_video(tmp_path, pipe, suffix, start):
    y = clicks()
    fps = 8  # 0.83 s from 0.37 s is 6.64 frames: the video (7 frames) is 0.045 s longer than the window
    result = render((y, RATE), "clicks", output=tmp_path / f"clicks{suffix}", pipeline=pipe, size=64, fps=fps,
                    start=start, batch_size=4)
    sound, frames = decoded(result.output)
    source = y[round((start or 0) * RATE):]
    assert abs(offset(sound, source)) <= 1
    assert frames == result.frames
    # AAC decodes whole frames of 1024 samples: the last one is padded with silence
    assert abs(len(sound) - frames / fps * RATE) < AAC_FRAME


def test_offset_finds_a_known_lag():
    """The measure itself: a copy 1024 samples late reads +1024, 5 early reads -5."""
    y = clicks()
    assert offset(np.concatenate([np.zeros(AAC_FRAME, np.float32), y]), y) == AAC_FRAME
    assert offset(y[5:], y) == -5
