"""MP4 writing with PyAV: H.264 (yuv420p, faststart) video plus the song as AAC, written under a
temporary name beside the target and renamed only when complete."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .files import check_output_path, temporary_beside

AUDIO_RATE = 44100
MAX_CRF = 51  # libx264's quality scale for 8-bit video: 0 (lossless) to 51


class VideoWriter:
    """Stream frames (uint8 N x H x W x 3) and audio into an MP4; atomic on `close()`.

    Use as a context manager: an exception (or Ctrl-C) inside deletes the partial file and leaves
    nothing at the target path.
    """

    def __init__(self, output: str | os.PathLike, width: int, height: int, fps: float, crf: int = 18,
                 preset: str = "medium"):
        from fractions import Fraction

        import av

        self.target = check_output_path(output)
        self.tmp = Path(temporary_beside(self.target, ".partial.mp4"))
        self.container = av.open(str(self.tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        rate = Fraction(fps).limit_denominator(1001)
        self.video = self.container.add_stream("libx264", rate=rate)
        self.video.width, self.video.height = width, height
        self.video.pix_fmt = "yuv420p"
        self.video.options = {"crf": str(int(crf)), "preset": preset}
        self.video.codec_context.time_base = 1 / rate
        self.audio = None
        self.frames = 0
        self._closed = False

    def add_audio(self, samples: np.ndarray, rate: int) -> None:
        """Encode the whole soundtrack as AAC. samples: (channels, n) float32 in [-1, 1]."""
        import av

        samples = np.atleast_2d(np.asarray(samples, dtype=np.float32))
        if samples.shape[0] > 2:
            samples = samples[:2]
        layout = "stereo" if samples.shape[0] == 2 else "mono"
        self.audio = self.container.add_stream("aac", rate=AUDIO_RATE)
        self.audio.layout = "stereo"
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
        block = 1 << 14
        for i in range(0, samples.shape[1], block):
            chunk = np.ascontiguousarray(samples[:, i:i + block])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = rate
            for out in resampler.resample(frame):
                self.container.mux(self.audio.encode(out))
        for out in resampler.resample(None):
            self.container.mux(self.audio.encode(out))
        self.container.mux(self.audio.encode(None))

    def write(self, images: np.ndarray) -> None:
        import av

        for image in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames
            self.container.mux(self.video.encode(frame))
            self.frames += 1

    def close(self) -> Path:
        self.container.mux(self.video.encode(None))
        self.container.close()
        self._closed = True
        os.replace(self.tmp, self.target)
        return self.target

    def abort(self) -> None:
        if not self._closed:
            try:
                self.container.close()
            except Exception:  # the file is being thrown away
                pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


def soundtrack(audio, start: float | None, duration: float | None) -> tuple[np.ndarray, int]:
    """(channels, n) float32 samples at the file's own rate (or the given pair's), for the window."""
    from .audio import check_window, decode_file

    check_window(start, duration)
    if isinstance(audio, (tuple, list)) and len(audio) == 2 and not isinstance(audio[0], (str, os.PathLike)):
        y, rate = np.asarray(audio[0], dtype=np.float32), int(audio[1])
        y = y[None] if y.ndim == 1 else (y if y.shape[0] < y.shape[1] else y.T)
    else:
        y = decode_file(Path(audio), AUDIO_RATE, mono=False)
        rate = AUDIO_RATE
    a = int(round((start or 0) * rate))
    b = None if duration is None else a + int(round(duration * rate))
    return np.clip(y[:, a:b], -1, 1), rate
