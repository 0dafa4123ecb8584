"""Decoding audio to mono float32 at the analysis rate: files a window at a time (seek, then trim to
the sample; a window's memory, not the file's) and (samples, rate) pairs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import MusicvizError
from .filters import resample
from .grid import SAMPLE_RATE


def check_window(start: float | None, duration: float | None) -> None:
    """Raise MusicvizError unless start (seconds, >= 0) and duration (seconds, > 0) are valid or None.

    Negative values would otherwise slice from the end of the song, silently."""
    for name, value in (("start", start), ("duration", duration)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))):
            raise MusicvizError(f"{name} must be a number of seconds, got {value!r:.40}")
    if start is not None and not (np.isfinite(start) and start >= 0):
        raise MusicvizError(f"start must be a time in seconds from 0 on, got {start}")
    if duration is not None and not (np.isfinite(duration) and duration > 0):
        raise MusicvizError(f"duration must be a positive number of seconds, got {duration}")


def window_samples(start: float | None, duration: float | None, rate: int, length: int) -> slice:
    """The samples of the window `start` / `duration` (seconds; None: from 0 / to the end) in a
    signal of `length` samples at `rate` Hz, clipped to the signal: a start past its end gives an
    empty window, a duration past it the rest of the signal (1e308 s must not overflow an int)."""

    def samples(seconds: float) -> int:
        x = seconds * rate
        return length if x >= length else int(round(x))

    first = samples(start or 0)
    return slice(first, length if duration is None else min(length, first + samples(duration)))


def is_sample_pair(audio) -> bool:
    """Whether `audio` is a (samples, sample_rate) pair rather than a path."""
    return isinstance(audio, (tuple, list)) and len(audio) == 2 and not isinstance(audio[0], (str, os.PathLike))


def sample_pair(audio) -> tuple[np.ndarray, int]:
    """A (samples, rate) pair as float32 (channels, n) samples in [-1, 1] scale and the rate in Hz.

    samples may be (n,), (n, channels) or (channels, n) (the shorter side is the channels); floats are
    taken as they are, integers scaled by their type's range (int16 from a WAV reader: / 32768).
    Non-finite samples (NaN, infinity) become silence.
    """
    samples, given = np.asarray(audio[0]), audio[1]
    try:
        rate = int(given)
        whole = rate == given
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or isinstance(given, bool):
        shown = f"an array of shape {np.shape(given)}" if np.ndim(given) else repr(given)
        raise MusicvizError(f"sample rate must be a whole number of Hz, got {shown} (audio is (samples, rate))")
    if rate <= 0:
        raise MusicvizError(f"sample rate must be positive, got {rate}")
    if samples.dtype.kind in "iu":
        info = np.iinfo(samples.dtype)
        middle = (int(info.max) + int(info.min) + 1) / 2  # 0 for signed types, 128 for uint8
        samples = (samples.astype(np.float64) - middle) / (int(info.max) + 1 - middle)
    elif samples.dtype.kind not in "fb":
        raise MusicvizError(f"audio samples must be real numbers, got {samples.dtype}")
    if samples.ndim == 1:
        samples = samples[None]
    elif samples.ndim == 2:
        samples = samples if samples.shape[0] <= samples.shape[1] else samples.T
    else:
        raise MusicvizError(f"audio samples must be 1-D or 2-D, got shape {samples.shape}")
    return finite_samples(samples), rate


def finite_samples(y: np.ndarray) -> np.ndarray:
    """`y` as float32 with NaN and infinite samples (a damaged float file) replaced by silence."""
    return np.nan_to_num(np.asarray(y, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def load_audio(audio, sr: int = SAMPLE_RATE, start: float | None = None, duration: float | None = None) -> tuple[np.ndarray, int]:
    """Mono float32 samples at `sr` Hz from a path (any format PyAV decodes) or a (samples, rate) pair
    (see `sample_pair`); start and duration are in seconds. Of a file, only the window is decoded.
    """
    check_window(start, duration)
    if is_sample_pair(audio):
        samples, rate = sample_pair(audio)
        samples = samples.mean(axis=0)
        y = samples if rate == sr else resample(samples, rate, sr)
        return y[window_samples(start, duration, sr, len(y))], sr
    return decode_file(Path(audio), sr, start=start, duration=duration), sr


PREROLL = 1.0  # seconds decoded before a window and thrown away: a codec's first packets after a seek
SETTLE = 0.5  # seconds resampled before a window and thrown away: the resampler's filter filling up
DECODE_BLOCK = 1 << 18  # samples in a block of decoded audio (11.9 s at 22.05 kHz)
STATEFUL_DECODERS = {"aac", "aac_fixed", "aac_latm"}  # decoded from the start for a window (see `_Decoding`)


def _check_audio_file(path: Path) -> None:
    if not path.exists():
        raise MusicvizError(f"audio file not found: {path}")
    if path.is_dir():
        raise MusicvizError(f"{path} is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise MusicvizError(f"audio file is empty: {path}")


def _window_bounds(start: float | None, duration: float | None, sr: int) -> tuple[int, int | None]:
    """The window's first sample and its end (None: the end of the file) at `sr` Hz, rounded as
    `window_samples` rounds them; a start or duration past any file (1e308 s) cannot overflow."""
    first = 0
    if start:
        x = start * sr
        first = int(round(x)) if np.isfinite(x) else 1 << 62
    if duration is None:
        return first, None
    x = duration * sr
    return first, (first + int(round(x))) if np.isfinite(x) else None


def _trim_front(frame, k: int):
    """A copy of the decoded `frame` without its first k samples, in its own format and layout."""
    import av

    data = frame.to_ndarray()
    keep = data[:, k:] if frame.format.is_planar else data[:, k * len(frame.layout.channels):]
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(keep), format=frame.format.name, layout=frame.layout.name)
    out.sample_rate = frame.sample_rate
    if frame.pts is not None and frame.time_base is not None:
        out.time_base = frame.time_base
        out.pts = frame.pts + int(round(k / (frame.sample_rate * frame.time_base)))
    return out


class _Decoding:
    """The decoded frames of a file's first audio stream, with each frame's first sample (at the
    stream's own rate) counted from the start of a whole decode, where frames follow one another.

    `frames(target)` starts at a frame that holds native sample `target` or an earlier one. Near the
    start it decodes from the start, counting samples. Further in it seeks to PREROLL before the
    target and reads the first frames' timestamps: the most common difference between a frame's
    timestamp and the samples before it in that run places them all (one timestamp alone can be off:
    Ogg Vorbis stamps frames where its window size changes 128 samples off). A seek that lands past
    the target seeks further back; a file that cannot seek, frames without timestamps, and codecs
    whose decoder carries state across the whole stream (AAC's noise substitution draws from one
    random sequence, so after a seek its noise bands differ) are decoded from the start, which skips
    the frames before the target without converting them.
    """

    def __init__(self, path: Path):
        import av

        self.path = path
        self.container = av.open(str(path))
        try:
            if not self.container.streams.audio:
                raise MusicvizError(f"{path} has no audio stream")
            self.stream = self.container.streams.audio[0]
            self.decoded = self.container.decode(self.stream)
            self.probe = next(self.decoded, None)  # the first frame: its rate, layout and timestamp
            if self.probe is None:
                raise MusicvizError(f"{path} holds no decodable audio")
        except BaseException:
            self.close()
            raise
        self.rate = self.probe.sample_rate
        self.channels = len(self.probe.layout.channels)

    def close(self) -> None:
        self.container.close()

    def seconds(self) -> float | None:
        """The stream's length (seconds) as the container states it, None if it does not."""
        stream, container = self.stream, self.container
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        return container.duration / 1e6 if container.duration else None

    def _from_start(self):
        """Frames from the start, counted; the first one is the probe when nothing was seeked."""
        import av

        position = 0
        if self.probe is None:  # a seek moved the decoder: start over in a fresh container
            self.close()
            self.container = av.open(str(self.path))
            self.stream = self.container.streams.audio[0]
            self.decoded = self.container.decode(self.stream)
        else:
            probe, self.probe = self.probe, None
            yield probe, 0
            position = probe.samples
        for frame in self.decoded:
            yield frame, position
            position += frame.samples

    def frames(self, target: int):
        from collections import Counter

        import av

        origin, tb = self.probe.pts, self.stream.time_base
        back = PREROLL
        if self.stream.codec_context.name in STATEFUL_DECODERS:
            target = 0
        while target > 0 and origin is not None and tb is not None and target / self.rate > back:
            seconds = target / self.rate - back
            if self.seconds() is not None:  # a window past the end: seek near the end, not past int64
                seconds = min(seconds, self.seconds())
            try:
                self.container.seek(origin + int(seconds / tb), stream=self.stream, backward=True, any_frame=False)
            except (av.error.FFmpegError, OSError, OverflowError):
                break
            self.probe = None
            self.decoded = self.container.decode(self.stream)
            first, seen = [], 0
            for frame in self.decoded:
                first.append(frame)
                seen += frame.samples
                if len(first) >= 24 and seen >= 4096:
                    break
            if not first or any(f.pts is None for f in first):
                break
            counts, before = Counter(), 0
            for f in first:
                counts[int(round((f.pts - origin) * tb * self.rate)) - before] += 1
                before += f.samples
            position = counts.most_common(1)[0][0]
            if position <= target:
                for frame in first:
                    yield frame, position
                    position += frame.samples
                for frame in self.decoded:
                    yield frame, position
                    position += frame.samples
                return
            back *= 4  # landed past the target: seek further back
        yield from self._from_start()


def _prepend_all(firsts, rest):
    """The items of `firsts`, then those of `rest`."""
    yield from firsts
    yield from rest


def decode_blocks(path: Path, sr: int = SAMPLE_RATE, mono: bool = True, start: float | None = None,
                  duration: float | None = None, block: int = DECODE_BLOCK, info: dict | None = None):
    """Yield the window `start` / `duration` (seconds; None: from 0 / to the end) of the first audio
    stream of a file as float32 blocks at `sr` Hz: (n,) when mono, else (channels, n) with up to two
    channels (stereo); blocks of about `block` samples, the last one shorter. `info`, when given,
    gets the number of channels ("channels") and the length the container states ("seconds", None
    if it states none).

    Only the window is decoded, so memory does not grow with the file: the decoder seeks to a little
    before the window (see `_Decoding`), the resampler starts on a native sample that falls on the
    output grid SETTLE before the window, and the samples before the window are dropped by count:
    they are those of a whole decode, sliced (sample-exact). A truncated file gives what decoded; an
    unreadable one raises MusicvizError.
    """
    import av

    path = Path(path)
    _check_audio_file(path)
    first, end = _window_bounds(start, duration, sr)
    decoding, pending, held = None, [], 0
    try:
        decoding = _Decoding(path)
        rate = decoding.rate
        channels = 1 if mono or decoding.channels < 2 else 2
        if info is not None:
            info["channels"] = channels
            info["seconds"] = decoding.seconds()
        if end is not None and end <= first:
            return
        step = rate // int(np.gcd(rate, sr))  # native samples between those that fall on the output grid
        target = max(0, (first - int(SETTLE * sr)) * rate // sr) // step * step
        out_at = target * sr // rate  # the output sample of native sample `target`
        resampler = av.AudioResampler(format="fltp", layout="mono" if channels == 1 else "stereo", rate=sr)
        frames = decoding.frames(target)
        while True:
            item = next(frames, None)
            outs = resampler.resample(None) if item is None else None
            if item is not None:
                frame, position = item
                if position + frame.samples <= target:
                    continue
                if position < target:
                    frame = _trim_front(frame, target - position)
                outs = resampler.resample(frame)
            for out in outs:
                data = out.to_ndarray().reshape(channels, -1)
                a, b = out_at, out_at + data.shape[1]
                out_at = b
                lo, hi = max(a, first), b if end is None else min(b, end)
                if hi > lo:
                    pending.append(data[:, lo - a:hi - a])
                    held += hi - lo
            if held >= block:
                yield _join(pending, mono)
                pending, held = [], 0
            if item is None or (end is not None and out_at >= end):
                break
    except MusicvizError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as e:
        if decoding is None:
            raise MusicvizError(f"cannot decode {path}: not a readable audio file ({type(e).__name__})") from None
        # A truncated file: keep what decoded.
    finally:
        if decoding is not None:
            decoding.close()
    if pending:
        yield _join(pending, mono)


def _join(parts: list, mono: bool) -> np.ndarray:
    y = finite_samples(np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0])
    return y[0] if mono else y


def decode_file(path: Path, sr: int = SAMPLE_RATE, mono: bool = True, start: float | None = None,
                duration: float | None = None) -> np.ndarray:
    """Decode the window `start` / `duration` (seconds; None: the whole file) of the first audio stream
    of a file to float32 at `sr` Hz with PyAV, block by block (see `decode_blocks`), into an array
    sized from the container's stated length, so the samples are not held twice.

    Mono: shape (n,); otherwise (channels, n) with up to two channels (stereo)."""
    info, out, n = {}, None, 0
    for block in decode_blocks(path, sr, mono, start, duration, info=info):
        block = np.atleast_2d(block)
        if out is None or n + block.shape[1] > out.shape[1]:
            left = max(0.0, info["seconds"] - (start or 0)) if info.get("seconds") else 600.0
            left = min(left, duration) if duration is not None else left
            size = max(int(left * sr * 1.01) + sr, n + block.shape[1], int(1.5 * (0 if out is None else out.shape[1])))
            grown = np.empty((block.shape[0], size), np.float32)
            if out is not None:
                grown[:, :n] = out[:, :n]
            out = grown
        out[:, n:n + block.shape[1]] = block
        n += block.shape[1]
    if out is None:
        out = np.zeros((info.get("channels", 1), 0), np.float32)
    out = out[:, :n]
    return out[0] if mono else out


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".aiff", ".aif", ".wma")


def find_audio(src: Path) -> list[Path]:
    """`src` itself (a file), or the audio files under the folder `src` (by suffix, sorted)."""
    src = Path(src)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise MusicvizError(f"not found: {src}")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise MusicvizError(f"no audio files under {src} (looked for {', '.join(AUDIO_SUFFIXES)})")
    return files


def output_stem(path: Path) -> str:
    """The name for what is made of the song `path`: its stem, or "STEM-EXT" where another audio file
    with that stem lies beside it (song.wav and song.flac), whatever else is being made."""
    path = Path(path)
    twins = [p for p in path.parent.glob(f"{path.stem}.*") if p.suffix.lower() in AUDIO_SUFFIXES and p.name != path.name]
    return f"{path.stem}-{path.suffix.lstrip('.').lower()}" if twins else path.stem
