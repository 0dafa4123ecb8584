"""Audio decoding and librosa features on the video frame grid.

Video frame k is at exactly k / fps seconds for the whole song; features computed on librosa's
own hop grid are interpolated (or, for events, rounded) onto it, so nothing drifts.
Pure numpy arrays; no model needed.

Memory follows the window, not the file: a window of a file is decoded alone (seek, then trim to
the sample), and a long window is analysed in blocks whose features equal the whole signal's (see
"the analysis, block by block" below). Music without a steady pulse gets no beat grid
(`beat_confidence`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MusicvizError

SAMPLE_RATE = 22050  # analysis rate (Hz)
HOP = 256  # analysis hop (samples): 11.6 ms, finer than a 60 fps frame
BANDS = {"bass": (20.0, 250.0), "mid": (250.0, 4000.0), "treble": (4000.0, 11025.0)}
MIN_FPS, MAX_FPS = 1.0, 240.0  # video frame rates: a frame a second to the fastest displays' rate
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def check_window(start: float | None, duration: float | None) -> None:
    """Raise MusicvizError unless start (seconds, >= 0) and duration (seconds, > 0) are valid or None.

    Negative values would otherwise slice from the end of the song, silently."""
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
        y = samples if rate == sr else _resample(samples, rate, sr)
        return y[window_samples(start, duration, sr, len(y))], sr
    return decode_file(Path(audio), sr, start=start, duration=duration), sr


def _resample(y: np.ndarray, rate: int, sr: int) -> np.ndarray:
    import librosa

    return librosa.resample(y, orig_sr=rate, target_sr=sr, res_type="soxr_hq")


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


@dataclass
class AudioFeatures:
    """Features on the video frame grid: row k describes time k / fps (seconds)."""

    fps: float
    duration: float  # seconds
    n_frames: int
    tempo: float  # beats per minute (0 when there is no steady beat)
    beat_times: np.ndarray  # seconds (none when there is no steady beat)
    onset_times: np.ndarray  # seconds, backtracked to the preceding energy minimum
    loudness: np.ndarray  # (n_frames,) RMS, normalised to [0, 1]
    mel_power: np.ndarray  # (n_frames,) mean mel power in dB, normalised to [0, 1]
    onset_strength: np.ndarray  # (n_frames,) percussive onset strength, normalised to [0, 1]
    chroma: np.ndarray  # (n_frames, 12) CQT chroma in [0, 1], C first
    chroma_delta: np.ndarray  # (n_frames, 12) change of chroma per frame
    bands: dict = field(default_factory=dict)  # name -> (n_frames,) energy in [0, 1]
    section_times: np.ndarray = field(default_factory=lambda: np.zeros(0))  # section starts (seconds), first is 0
    beat_confidence: float = 1.0  # strength of the pulse, 0 (none) to 1 (a click track); see `beat_confidence`
    onset_salience: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per onset, 0 to 1; see `onset_salience`
    steady_beat: bool = True  # whether beat_times is a beat grid; False for music without a steady pulse

    def __post_init__(self):
        self.steady_beat = bool(self.steady_beat and len(self.beat_times) >= 2)  # a grid needs two beats

    @property
    def times(self) -> np.ndarray:
        return np.arange(self.n_frames) / self.fps

    def frame_of(self, seconds) -> np.ndarray:
        return np.clip(np.round(np.asarray(seconds) * self.fps).astype(int), 0, self.n_frames - 1)

    @property
    def beat_frames(self) -> np.ndarray:
        return self.frame_of(self.beat_times)

    @property
    def onset_frames(self) -> np.ndarray:
        return self.frame_of(self.onset_times)

    def section_of_frames(self) -> np.ndarray:
        """(n_frames,) section index of each frame."""
        return np.searchsorted(self.section_times, self.times, side="right") - 1


def beat_summary(features: AudioFeatures) -> str:
    """"tempo 117.5 BPM, 251 beats", or "no steady beat" for music without one (see `beat_confidence`)."""
    if not features.steady_beat:
        return "no steady beat"
    return f"tempo {features.tempo:.1f} BPM, {counted(len(features.beat_times), 'beat')}"


def short_window(features: AudioFeatures, duration: float | None) -> str | None:
    """What to tell a user whose window (`duration` seconds asked for) the song's end cut short, else None."""
    if duration is None or features.n_frames >= frame_count(duration, features.fps):
        return None
    return f"the song ends {features.duration:.2f} s after the start: the window is that long, not {duration:g} s"


def counted(n: int, thing: str) -> str:
    """"1 beat", "2 beats"."""
    return f"{n} {thing}" + ("" if n == 1 else "s")


def frame_count(duration: float, fps: float) -> int:
    """Number of video frames for `duration` seconds at `fps`: round(duration * fps)."""
    return int(round(duration * fps))


def _norm(x: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    lo, hi = np.min(x), np.max(x)
    return np.zeros_like(x) if hi - lo < 1e-12 else (x - lo) / (hi - lo)


def _on_grid(values: np.ndarray, feature_times: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Interpolate a (T,) or (T, k) feature sampled at feature_times onto times."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        return np.interp(times, feature_times, values)
    return np.stack([np.interp(times, feature_times, v) for v in values.T], axis=1)


def refine_to_attacks(beat_times: np.ndarray, y: np.ndarray, sr: int, before: float = 0.06,
                      after: float = 0.03) -> np.ndarray:
    """Move each beat (seconds) to the sharpest energy rise within [beat - before, beat + after].

    The beat tracker places beats on onset-envelope peaks, which trail the attack by a frame or
    two of its 2048-sample window; a 1.5 ms energy envelope finds the attack itself.
    """
    import librosa

    if len(beat_times) == 0:
        return beat_times
    env = librosa.feature.rms(y=y, frame_length=ATTACK_FRAME, hop_length=ATTACK_HOP, center=True)[0]
    return _refine_on_envelope(beat_times, env, sr, before, after)


ATTACK_FRAME, ATTACK_HOP = 256, 32  # samples: the energy envelope that finds attacks (11.6 ms window, 1.5 ms hop)


def _refine_on_envelope(beat_times: np.ndarray, env: np.ndarray, sr: int, before: float, after: float) -> np.ndarray:
    """`refine_to_attacks` on a ready energy envelope (RMS, ATTACK_FRAME-sample frames every ATTACK_HOP)."""
    if len(beat_times) == 0:
        return beat_times
    hop = ATTACK_HOP
    rise = np.diff(np.log(env + 1e-6), prepend=np.log(env[0] + 1e-6))
    out = np.array(beat_times, dtype=np.float64)
    for i, b in enumerate(beat_times):
        lo, hi = int((b - before) * sr / hop), int((b + after) * sr / hop) + 1
        lo, hi = max(lo, 0), min(hi, len(rise))
        if hi - lo > 1:
            out[i] = (lo + int(np.argmax(rise[lo:hi]))) * hop / sr
    return out


# -- the analysis, block by block ------------------------------------------------------------------
#
# A song is analysed in blocks of BLOCK_FRAMES STFT frames. Every feature of a frame depends only on
# frames and samples near it, so each block reads REACH frames more on either side (the HPSS median
# filters' half-length and the onset envelope's delay, which exceeds the inverse STFT's reach) and
# its chroma CHROMA_REACH more samples of the harmonic signal (the longest constant-Q filter), and the
# features come out as a computation on the whole signal gives them. What depends on the whole song
# is small and comes first: the loudest STFT bin and the loudest percussive bin (the onset
# envelopes' dB floors) and the tuning, found in a first pass over the song. A window held in memory
# is read again from memory; a longer one is decoded again.

N_FFT = 2048  # samples: the STFT's window (93 ms)
KERNEL = 31  # HPSS median filter length: frames in time, bins in frequency (librosa's default)
ONSET_DELAY = 1 + N_FFT // (2 * HOP)  # frames: the onset envelope at frame t is the rise into frame t - 4
REACH = KERNEL // 2 + ONSET_DELAY  # frames read beyond a block's edges: the medians' 15, the onsets' 5
BLOCK_FRAMES = 2560  # STFT frames in an analysis block (29.7 s)
CHROMA_REACH = 172 * HOP  # samples of harmonic signal beyond a span's edges its CQT reads (2.0 s)
CHROMA_SPAN = 4  # blocks whose chroma is computed at once (fewer, longer CQTs read less beyond their edges)
IN_MEMORY = 600.0  # seconds: a window up to this long is decoded once and held (53 MB)
BEAT_PRIOR_BPM = 120.0  # the tempo estimate's log-normal prior: its centre (librosa's default)


def _fast_kernels():
    """The numba kernels (compiled on first use, cached beside this file)."""
    global _KERNELS
    if _KERNELS is None:
        import numba

        global _prange
        _prange = numba.prange  # the loops over rows of the HPSS kernels run on every core
        jit = numba.njit(cache=True, nogil=True)
        parallel = numba.njit(cache=True, nogil=True, parallel=True)
        _KERNELS = parallel(_median_rows), parallel(_soft_masks), jit(_beat_local_score), jit(_beat_dp)
    return _KERNELS


_KERNELS = None
_prange = range  # numba.prange once the kernels are compiled


def _median_rows(x, k, out, transposed):
    """Median filter of odd length k along each row of x (2-D float32, C-contiguous), written to
    out[r, i], or out[i, r] when transposed; edges as scipy.ndimage's mode 'reflect' (d c b a | a b c
    d | d c b a): the values of scipy.ndimage.median_filter(x, size=(1, k), mode='reflect').

    The window keeps each value's rank; a slide updates every rank with a compare and an add, which
    compile to vector instructions (librosa's HPSS spends most of its time in scipy's median filter).
    """
    rows, n = x.shape
    h = k // 2
    slots = ((k + 7) // 8) * 8  # a whole number of vectors; the spare slots hold +inf, ranked last
    incoming = np.empty(n, np.int64)
    period = 2 * n
    for i in range(n):
        j = (i + h) % period
        incoming[i] = j if j < n else period - 1 - j
    for r in _prange(rows):  # rows in parallel
        vals = np.empty(slots, np.float32)
        ranks = np.empty(slots, np.int32)
        row = x[r]
        for j in range(slots):
            if j < k:
                m = (j - h) % period
                vals[j] = row[m if m < n else period - 1 - m]
            else:
                vals[j] = np.inf
        for j in range(slots):
            v = vals[j]
            c = 0
            for m in range(slots):
                c += (vals[m] < v) or (vals[m] == v and m < j)
            ranks[j] = c
        med = np.float32(0)
        for j in range(slots):
            if ranks[j] == h:
                med = vals[j]
        if transposed:
            out[0, r] = med
        else:
            out[r, 0] = med
        for i in range(1, n):
            slot = (i - 1) % k  # the oldest value's slot
            v_in = row[incoming[i]]
            r_out = ranks[slot]
            v_out = vals[slot]
            r_in = np.int32(0)
            for j in range(slots):
                v = vals[j]
                rank = ranks[j]
                rank -= np.int32(rank > r_out)
                rank += np.int32(v > v_in)
                r_in += np.int32(v <= v_in)
                ranks[j] = rank
            vals[slot] = v_in
            ranks[slot] = r_in - np.int32(v_out <= v_in)
            med = np.float32(0)
            for j in range(slots):
                med = vals[j] if ranks[j] == h else med
            if transposed:
                out[i, r] = med
            else:
                out[r, i] = med


def _soft_masks(harm, perc, mask_harm, mask_perc):
    """librosa.util.softmask (power 2, split zeros) of the HPSS medians both ways, in float32 as
    librosa computes it: harm (T, F) and perc (T, F) in, the harmonic and percussive masks out."""
    tiny = np.float32(1.1754944e-38)
    t_n, f_n = harm.shape
    for t in _prange(t_n):
        for f in range(f_n):
            a = harm[t, f]
            b = perc[t, f]
            z = max(a, b)
            if z < tiny:
                mask_harm[t, f] = np.float32(0.5)
                mask_perc[t, f] = np.float32(0.5)
            else:
                a = a / z
                b = b / z
                a = a * a
                b = b * b
                mask_harm[t, f] = a / (a + b)
                mask_perc[t, f] = b / (b + a)


def _medians(mag: np.ndarray, median_rows) -> tuple[np.ndarray, np.ndarray]:
    """HPSS median filters of magnitudes (T, F): along time (harmonic) and along frequency (percussive),
    each (T, F)."""
    harm = np.empty_like(mag)
    perc = np.empty_like(mag)
    if min(mag.shape) < 3:  # scipy extends an axis of 1 or 2 values its own way
        from scipy.ndimage import median_filter

        return (median_filter(mag, size=(KERNEL, 1), mode="reflect"),
                median_filter(mag, size=(1, KERNEL), mode="reflect"))
    median_rows(np.ascontiguousarray(mag.T), KERNEL, harm, True)
    median_rows(mag, KERNEL, perc, False)
    return harm, perc


class _Reader:
    """Samples a..b of a signal given as blocks (1-D float32), zeros outside it; a read never starts
    before the previous one, so only the samples from there on are kept. `length` is known once the
    last block was read."""

    def __init__(self, blocks):
        self.blocks = iter(blocks)
        self.buf = np.zeros(0, np.float32)
        self.at = 0  # the sample index of buf[0]
        self.length = None

    def read(self, a: int, b: int) -> np.ndarray:
        parts, end = [self.buf], self.at + len(self.buf)
        while self.length is None and end < b:
            block = next(self.blocks, None)
            if block is None:
                self.length = end
                break
            parts.append(np.asarray(block, np.float32))
            end += len(block)
        if len(parts) > 1:
            self.buf = np.concatenate(parts)
        drop = min(max(0, a - self.at), len(self.buf))
        self.buf, self.at = self.buf[drop:], self.at + drop
        out = np.zeros(b - a, np.float32)
        lo, hi = max(a, self.at), min(b, self.at + len(self.buf))
        if hi > lo:
            out[lo - a:hi - a] = self.buf[lo - self.at:hi - self.at]
        return out


def _stft(y_seg: np.ndarray) -> np.ndarray:
    """(frames, N_FFT // 2 + 1) complex64 STFT of samples whose frame k starts at k * HOP (Hann window)."""
    import scipy.fft
    from numpy.lib.stride_tricks import sliding_window_view

    frames = sliding_window_view(y_seg, N_FFT)[::HOP]
    return scipy.fft.rfft(frames * _window(), axis=-1)


def _window() -> np.ndarray:
    global _WINDOW
    if _WINDOW is None:
        from scipy.signal import get_window

        _WINDOW = get_window("hann", N_FFT, fftbins=True).astype(np.float32)
    return _WINDOW


_WINDOW = None


def _istft_span(spec: np.ndarray, first: int, a: int, b: int) -> np.ndarray:
    """Samples a..b of the inverse STFT (overlap-add, normalised by the summed squared window) of
    `spec` (frames, bins) whose first row is frame `first`; frame k is centred on sample k * HOP."""
    import scipy.fft

    t = len(spec)
    per = N_FFT // HOP
    frames = (scipy.fft.irfft(spec, n=N_FFT, axis=-1) * _window()).reshape(t, per, HOP)
    out = np.zeros((t + per - 1, HOP), np.float32)
    norm = np.zeros((t + per - 1, HOP), np.float32)
    square = (_window() ** 2).reshape(per, HOP)
    for j in range(per):
        out[j:j + t] += frames[:, j]
        norm[j:j + t] += square[j]
    out, norm = out.ravel(), norm.ravel()
    good = norm > np.finfo(np.float32).tiny
    out[good] /= norm[good]
    origin = first * HOP - N_FFT // 2  # the sample of out[0]
    return out[a - origin:b - origin]


def _db(mag: np.ndarray, loudest: float) -> np.ndarray:
    """librosa.amplitude_to_db(mag, ref=loudest, top_db=80) with `loudest` the whole song's loudest
    magnitude, so the floor is 80 dB below it as ref=np.max puts it on the whole spectrogram (computed
    with the natural logarithm, several times faster than log10 on float32, to float rounding)."""
    scale = np.float32(20.0 / np.log(10.0))
    db = np.log(np.maximum(mag, np.float32(1e-5)))
    db *= scale
    db -= scale * np.log(np.maximum(np.float32(loudest), np.float32(1e-5)))
    return np.maximum(db, np.float32(-80.0), out=db)


def _onset_rows(db: np.ndarray) -> np.ndarray:
    """librosa.onset.onset_strength of a dB spectrogram (frames, bins), lag 1, centred: frame t gets
    the mean rise from frame t - 5 to t - 4 (n_fft // (2 hop) + lag frames later)."""
    return np.maximum(0.0, db[1:] - db[:-1]).mean(axis=1)


def _tuning(pitch_residuals: np.ndarray, pitch_mags: np.ndarray) -> float:
    """librosa.estimate_tuning's result from the residuals (fractions of a bin) and magnitudes of
    every pitched peak piptrack found: the histogram peak of the residuals of the louder half."""
    if len(pitch_mags) == 0:
        return 0.0
    keep = pitch_mags >= np.median(pitch_mags)
    bins = np.linspace(-0.5, 0.5, int(np.ceil(1.0 / 0.01)) + 1)
    counts, edges = np.histogram(pitch_residuals[keep], bins)
    return float(edges[np.argmax(counts)])


def _pitch_peaks(mag_frames: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """(residuals, magnitudes) of the pitched peaks librosa.piptrack finds (150 to 4000 Hz, above a
    tenth of the frame's peak) in magnitude frames (frames, N_FFT // 2 + 1), computed on that band
    only, with the residual (a fraction of a bin) as librosa.pitch_tuning computes it, at 36 bins an
    octave as chroma_cqt's CQT."""
    import librosa

    freqs = np.fft.rfftfreq(N_FFT, 1.0 / sr)
    lo, hi = int(np.argmax(freqs >= 150.0)), int(np.argmax(freqs >= 4000.0))
    s = mag_frames[:, lo - 1:hi + 1]
    kept = s * (s > np.float32(0.1) * mag_frames.max(axis=1, keepdims=True))
    mid = kept[:, 1:-1]
    rows, cols = np.nonzero((mid > kept[:, :-2]) & (mid >= kept[:, 2:]))
    left, centre, right = s[rows, cols], s[rows, cols + 1], s[rows, cols + 2]
    a = right + left - 2 * centre
    b = (right - left) / 2
    shift = np.where(np.abs(b) >= np.abs(a), np.float32(0), -b / np.where(a == 0, np.float32(1), a))
    pitch = ((cols + lo + shift) * float(sr) / N_FFT).astype(np.float32)
    mags = centre + np.float32(0.5) * b * shift
    residual = np.mod(CQT_BINS_PER_OCTAVE * librosa.hz_to_octs(pitch), 1.0)
    residual[residual >= 0.5] -= 1.0
    return residual, mags


CQT_BINS_PER_OCTAVE = 36  # librosa.feature.chroma_cqt's default


def _whole_song(reader: _Reader, sr: int, median_rows, soft_masks) -> dict:
    """The whole-song quantities, in one pass: the number of samples, the peak sample, the loudest STFT
    bin, the loudest percussive bin, and piptrack's pitched peaks (every other frame, as
    librosa.estimate_tuning's hop of n_fft / 4 takes them) for the tuning.

    The loudest percussive bin needs the HPSS medians only where a bin is louder than the loudest
    percussive bin so far (a percussive bin is its STFT bin times a mask of at most 1): the first block
    is filtered whole, later ones at those bins, or whole when they are many."""
    reach = KERNEL // 2
    peak = loud = loud_perc = 0.0
    residuals, mags = [], []
    c0, n_fr = 0, None
    while n_fr is None or c0 < n_fr:
        c1 = c0 + BLOCK_FRAMES
        e0, e1 = max(0, c0 - reach), c1 + reach
        y_seg = reader.read(e0 * HOP - N_FFT // 2, (e1 - 1) * HOP + N_FFT // 2)
        if reader.length is not None and n_fr is None:
            n_fr = 1 + max(reader.length, N_FFT) // HOP
        if n_fr is not None:
            e1, c1 = min(e1, n_fr), min(c1, n_fr)
        lo, hi = c0 * HOP - (e0 * HOP - N_FFT // 2), c1 * HOP - (e0 * HOP - N_FFT // 2)
        peak = max(peak, float(np.max(np.abs(y_seg[lo:hi]), initial=0.0)))
        mag = np.abs(_stft(y_seg)[: e1 - e0])
        core = mag[c0 - e0:c1 - e0]
        loud = max(loud, float(core.max(initial=0.0)))
        candidates = np.nonzero(core > loud_perc)
        if len(candidates[0]) > 0.02 * core.size:
            harm, perc = _medians(mag, median_rows)
            mask_harm, mask_perc = np.empty_like(mag), np.empty_like(mag)
            soft_masks(harm, perc, mask_harm, mask_perc)
            loud_perc = max(loud_perc, float((mag * mask_perc)[c0 - e0:c1 - e0].max(initial=0.0)))
        elif len(candidates[0]):
            loud_perc = max(loud_perc, _percussive_at(mag, candidates[0] + (c0 - e0), candidates[1]))
        even = np.arange(c0 + (c0 % 2), c1, 2)
        r, m = _pitch_peaks(mag[even - e0], sr)
        residuals.append(r)
        mags.append(m)
        c0 = c1
    return {"length": reader.length, "peak": peak, "loud": loud, "loud_perc": loud_perc,
            "tuning": _tuning(np.concatenate(residuals), np.concatenate(mags))}


def _percussive_at(mag: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> float:
    """The largest percussive magnitude (HPSS, as `_medians` and `_soft_masks` give it) among the bins
    (rows, cols) of `mag` (frames, bins), whose rows are at least KERNEL // 2 frames from a block edge
    that is not the signal's."""
    h = KERNEL // 2
    offsets = np.arange(-h, h + 1)

    def reflect(i, n):
        i = np.mod(i, 2 * n)
        return np.where(i < n, i, 2 * n - 1 - i)

    t_n, f_n = mag.shape
    best = 0.0
    chunk = 1 << 16  # bins at a time: their windows take 31 values each, twice
    for s in range(0, len(rows), chunk):
        r, c = rows[s:s + chunk], cols[s:s + chunk]
        along_time = mag[reflect(r[:, None] + offsets, t_n), c[:, None]]
        along_freq = mag[r[:, None], reflect(c[:, None] + offsets, f_n)]
        harm = np.partition(along_time, h, axis=1)[:, h]
        perc = np.partition(along_freq, h, axis=1)[:, h]
        mask = np.empty(len(r), np.float32)
        _soft_masks_np(harm, perc, mask)
        best = max(best, float((mag[r, c] * mask).max()))
    return best


def _soft_masks_np(harm: np.ndarray, perc: np.ndarray, mask_perc: np.ndarray) -> None:
    """The percussive mask of `_soft_masks`, in numpy (the same float32 operations)."""
    z = np.maximum(harm, perc)
    bad = z < np.float32(1.1754944e-38)
    z = np.where(bad, np.float32(1), z)
    a, b = np.square(harm / z), np.square(perc / z)
    mask_perc[:] = np.where(bad, np.float32(0.5), b / (b + a))


class _Features:
    """The per-frame features of a whole signal, filled block by block."""

    def __init__(self, n_fr: int, n_samples: int, pool: int):
        self.rms = np.zeros(n_fr, np.float32)
        self.mel = np.zeros(n_fr, np.float32)  # mean mel power
        self.bands = {name: np.zeros(n_fr, np.float32) for name in BANDS}
        self.percussive = np.zeros(n_fr, np.float32)  # onset strength of the percussive part
        self.onsets = np.zeros(n_fr, np.float32)  # onset strength of the whole spectrum
        self.chroma = np.zeros((12, n_fr), np.float32)
        self.attack = np.zeros(1 + n_samples // ATTACK_HOP, np.float32)  # refine_to_attacks's envelope
        self.pool = pool  # frames per step of the coarse mel sequence the sections are found on
        self.mel_pool = np.zeros((-(-n_fr // pool), 128))


def _mel_basis(sr: int) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sr, n_fft=N_FFT)


def _block_features(out: _Features, y_seg: np.ndarray, e0: int, c0: int, c1: int, n_fr: int, n_samples: int,
                    g: dict | None, median_rows, soft_masks, mel_basis: np.ndarray, sr: int) -> tuple[dict, np.ndarray]:
    """Fill frames c0..c1 of `out` from the samples of frames e0.. (`y_seg`, from sample
    e0 * HOP - N_FFT // 2). `g` holds the whole-song quantities (`_whole_song`); None when the block
    is the whole signal, which gives them. Returns them and the harmonic signal's samples
    c0 * HOP..c1 * HOP (to n_samples; none when the song is silent)."""
    from numpy.lib.stride_tricks import sliding_window_view

    spec = _stft(y_seg)
    spec = spec[: min(len(spec), n_fr - e0)]
    mag = np.abs(spec)
    harm, perc = _medians(mag, median_rows)
    mask_harm, mask_perc = np.empty_like(mag), np.empty_like(mag)
    soft_masks(harm, perc, mask_harm, mask_perc)
    del harm, perc
    if g is None:
        residuals, mags = _pitch_peaks(mag[::2], sr)
        y = y_seg[N_FFT // 2:N_FFT // 2 + n_samples]
        g = {"length": n_samples, "peak": float(np.max(np.abs(y), initial=0.0)), "loud": float(mag.max()),
             "loud_perc": float((mag * mask_perc).max()), "tuning": _tuning(residuals, mags)}
    core = slice(c0 - e0, c1 - e0)
    power = np.square(mag[core])
    x = power.copy()
    x[:, 0] *= 0.5
    x[:, -1] *= 0.5
    out.rms[c0:c1] = np.sqrt(2 * x.sum(axis=1) / N_FFT**2)
    del x
    mel = power @ mel_basis.T
    out.mel[c0:c1] = mel.mean(axis=1)
    p0 = c0 // out.pool
    starts = np.arange(p0 * out.pool, c1, out.pool)
    starts[0] = c0
    out.mel_pool[p0:p0 + len(starts)] += np.add.reduceat(mel.astype(np.float64), starts - c0, axis=0)
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / sr)
    for name, (lo, hi) in BANDS.items():
        out.bands[name][c0:c1] = np.sqrt(power[:, (freqs >= lo) & (freqs < hi)].mean(axis=1))
    del power, mel
    # onset strength at frame t: the rise from frame t - 5 to t - 4
    first = max(c0, 5)
    if c1 > first:
        rows = slice(first - 5 - e0, c1 - 4 - e0)
        out.onsets[first:c1] = _onset_rows(_db(mag[rows], g["loud"]))
        out.percussive[first:c1] = _onset_rows(_db(mag[rows] * mask_perc[rows], g["loud_perc"]))
    # the attack envelope: frames every ATTACK_HOP samples
    a0, a1 = c0 * HOP // ATTACK_HOP, min(c1 * HOP // ATTACK_HOP, len(out.attack))
    seg0 = e0 * HOP - N_FFT // 2
    piece = y_seg[a0 * ATTACK_HOP - ATTACK_FRAME // 2 - seg0:(a1 - 1) * ATTACK_HOP + ATTACK_FRAME // 2 - seg0]
    frames = sliding_window_view(piece, ATTACK_FRAME)[::ATTACK_HOP]
    out.attack[a0:a1] = np.sqrt(np.mean(np.square(frames), axis=1))
    if g["peak"] < SILENCE:
        return g, np.zeros(0, np.float32)
    h0, h1 = max(c0 - N_FFT // HOP // 2, 0), min(c1 + N_FFT // HOP // 2, n_fr)
    harmonic = spec[h0 - e0:h1 - e0] * mask_harm[h0 - e0:h1 - e0]
    return g, _istft_span(harmonic, h0, c0 * HOP, min(c1 * HOP, n_samples))


SILENCE = 1e-6  # peak sample below which a signal is silent: no beats, onsets, chroma or sections


def _chroma_span(harmonic: np.ndarray, at: int, c0: int, c1: int, n_samples: int, chroma_of) -> np.ndarray:
    """(12, c1 - c0) CQT chroma (`chroma_of`, a `_CQTChroma`) of frames c0..c1 from the harmonic signal
    `harmonic` (its first sample is sample `at`), which holds samples c0 * HOP - CHROMA_REACH..c1 * HOP
    + CHROMA_REACH (clipped to the signal)."""
    s0, s1 = max(0, c0 * HOP - CHROMA_REACH), min(n_samples, c1 * HOP + CHROMA_REACH)
    chroma = chroma_of(harmonic[s0 - at:s1 - at])
    first = c0 - s0 // HOP
    return np.nan_to_num(chroma[:, first:first + c1 - c0])


class _CQTChroma:
    """librosa.feature.chroma_cqt(y, sr, hop_length, tuning) with its defaults (7 octaves of 36 bins
    from C1, Hann wavelets, 'soxr_hq' resampling), computed as librosa's vqt computes it but with the
    octaves' filters made once per analysis (librosa makes them at every call) and each octave's
    response one dense matrix product of frames laid out row by row."""

    def __init__(self, sr: int, hop: int, tuning: float):
        import librosa
        from librosa.core import constantq as cq

        self.filter_fft = getattr(cq, "__vqt_filter_fft")
        self.early_count = getattr(cq, "__early_downsample_count")
        self.trim_stack = getattr(cq, "__trim_stack")
        bpo, n_oct = 36, 7
        self.n_bins, self.n_oct = bpo * n_oct, n_oct
        c1 = librosa.note_to_hz("C1")
        freqs = librosa.interval_frequencies(n_bins=self.n_bins, fmin=c1 * 2.0 ** (tuning / bpo), intervals="equal",
                                             bins_per_octave=bpo, sort=True)
        alpha = librosa.filters._relative_bandwidth(freqs=freqs)
        shape = dict(window="hann", filter_scale=1, gamma=0, alpha=alpha)
        _, cutoff = librosa.filters.wavelet_lengths(freqs=freqs, sr=sr, **shape)
        count = self.early_count(sr / 2.0, cutoff, hop, n_oct)
        self.factor = 2 ** count
        self.sr, self.hop = sr / self.factor, hop // self.factor
        lengths, _ = librosa.filters.wavelet_lengths(freqs=freqs, sr=self.sr, **shape)
        self.scale = (1.0 / np.sqrt(lengths)).astype(np.float32)[:, None]
        self.octaves = []
        my_sr, my_hop = self.sr, self.hop
        for i in range(n_oct):
            sl = slice(-bpo, None) if i == 0 else slice(-bpo * (i + 1), -bpo * i)
            basis, n_fft, _ = self.filter_fft(my_sr, freqs[sl], 1, 1, 0.01, window="hann", gamma=0, dtype=np.complex64,
                                              alpha=alpha[sl])
            basis = basis.toarray() * np.sqrt(self.sr / my_sr)
            self.octaves.append((np.ascontiguousarray(basis.T.astype(np.complex64)), n_fft, my_hop))
            if my_hop % 2 == 0:
                my_hop //= 2
                my_sr /= 2.0
        self.to_chroma = librosa.filters.cq_to_chroma(self.n_bins, bins_per_octave=bpo, n_chroma=12, fmin=c1)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        import librosa
        import scipy.fft
        from numpy.lib.stride_tricks import sliding_window_view

        if self.factor > 1:
            y = librosa.resample(y, orig_sr=self.factor, target_sr=1, res_type="soxr_hq", scale=True)
        responses = []
        for i, (basis, n_fft, hop) in enumerate(self.octaves):
            padded = np.pad(y, n_fft // 2)
            frames = sliding_window_view(padded, n_fft)[::hop]
            responses.append((scipy.fft.rfft(frames, axis=-1) @ basis).T)
            if hop % 2 == 0:
                y = librosa.resample(y, orig_sr=2, target_sr=1, res_type="soxr_hq", scale=True)
        cqt = np.abs(self.trim_stack(responses, self.n_bins, np.complex64)) * self.scale
        chroma = self.to_chroma @ cqt
        chroma[chroma < 0] = 0.0
        return librosa.util.normalize(chroma, norm=np.inf, axis=-2)


def _chroma_function(sr: int, tuning: float):
    """A `_CQTChroma`, or librosa.feature.chroma_cqt itself where this librosa's CQT internals differ."""
    try:
        return _CQTChroma(sr, HOP, tuning)
    except (AttributeError, TypeError, ValueError):
        import librosa

        def chroma_of(y):
            with warnings.catch_warnings():  # short clips (the lowest CQT octaves are shorter than their FFT)
                warnings.filterwarnings("ignore", message="n_fft=.* is too large", category=UserWarning)
                return librosa.feature.chroma_cqt(y=y, sr=sr, hop_length=HOP, tuning=tuning)

        return chroma_of


def _feature_pass(reader: _Reader, n_samples: int, g: dict | None, sr: int,
                  block_frames: int) -> tuple[_Features, dict]:
    """Every per-frame feature of the signal of `n_samples` samples (at least N_FFT: a shorter signal
    is padded with silence), block by block; `g` as in `_block_features`."""
    median_rows, soft_masks = _fast_kernels()[:2]
    n_fr = 1 + n_samples // HOP
    out = _Features(n_fr, n_samples, max(8, -(-n_fr // 4096)))
    mel_basis = _mel_basis(sr)
    harmonic, harmonic_at, waiting, chroma_of = np.zeros(0, np.float32), 0, [], None
    for c0 in range(0, n_fr, block_frames):
        c1 = min(c0 + block_frames, n_fr)
        e0, e1 = max(0, c0 - REACH), min(n_fr, c1 + REACH)
        y_seg = reader.read(e0 * HOP - N_FFT // 2, (e1 - 1) * HOP + N_FFT // 2)
        g, y_harm = _block_features(out, y_seg, e0, c0, c1, n_fr, n_samples, g, median_rows, soft_masks,
                                    mel_basis, sr)
        del y_seg
        if g["peak"] < SILENCE:
            continue
        harmonic = np.concatenate([harmonic, y_harm])
        waiting.append((c0, c1))
        have = harmonic_at + len(harmonic)
        while len(waiting) > CHROMA_SPAN or (waiting and have >= n_samples):
            w0, w1 = waiting[0][0], waiting[min(CHROMA_SPAN, len(waiting)) - 1][1]
            if have < min(n_samples, w1 * HOP + CHROMA_REACH):
                break
            del waiting[:CHROMA_SPAN]
            if chroma_of is None:
                chroma_of = _chroma_function(sr, g["tuning"])
            out.chroma[:, w0:w1] = _chroma_span(harmonic, harmonic_at, w0, w1, n_samples, chroma_of)
            drop = max(0, max(0, (waiting[0][0] if waiting else w1) * HOP - CHROMA_REACH) - harmonic_at)
            harmonic, harmonic_at = harmonic[drop:], harmonic_at + drop
    return out, g


def _tempo(onset_env: np.ndarray, sr: int) -> float:
    """librosa.feature.tempo's estimate (BPM): a log-normal prior at 120 BPM on the autocorrelation of
    8 s Hann windows of the onset envelope, normalised and averaged over the song; computed in float32
    with a power-of-two FFT, a block of windows at a time, so a long song's tempogram is never held."""
    import librosa
    import scipy.fft
    from numpy.lib.stride_tricks import sliding_window_view

    win = int(librosa.time_to_frames(8.0, sr=sr, hop_length=HOP))
    n = len(onset_env)
    padded = np.pad(onset_env.astype(np.float32), (win // 2, win // 2), mode="linear_ramp", end_values=[0, 0])
    window = librosa.filters.get_window("hann", win, fftbins=True).astype(np.float32)
    frames = sliding_window_view(padded, win)  # row t: the window centred on frame t
    size = 1 << int(np.ceil(np.log2(2 * win - 1)))
    total = np.zeros(win)
    for s in range(0, n, 4096):
        spec = scipy.fft.rfft(frames[s:min(s + 4096, n)] * window, n=size, axis=-1)
        ac = scipy.fft.irfft(spec.real**2 + spec.imag**2, n=size, axis=-1)[:, :win]
        peak = np.abs(ac).max(axis=1, keepdims=True)
        total += (ac / np.where(peak < np.finfo(np.float32).tiny, np.float32(1), peak)).sum(axis=0)
    mean = total / n
    bpms = librosa.tempo_frequencies(win, hop_length=HOP, sr=sr)
    with np.errstate(divide="ignore"):
        logprior = -0.5 * ((np.log2(bpms) - np.log2(BEAT_PRIOR_BPM)) / 1.0) ** 2
    logprior[: int(np.argmax(bpms < 320.0))] = -np.inf
    best = int(np.argmax(np.log1p(1e6 * mean) + logprior))
    return float(bpms[best])


def _analysis_signal(audio, start: float | None, duration: float | None, sr: int):
    """The window to analyse: (samples, None) when it is held in memory (a (samples, rate) pair, or a
    file window up to IN_MEMORY seconds), else (None, blocks), `blocks()` giving its samples in
    pieces, from a decode of the file each call."""
    if is_sample_pair(audio):
        return load_audio(audio, sr, start, duration)[0], None
    blocks = decode_blocks(Path(audio), sr, True, start, duration)
    head, held = [], 0
    for block in blocks:
        head.append(block)
        held += len(block)
        if held > IN_MEMORY * sr:
            return None, _Decodes(head, blocks, lambda: decode_blocks(Path(audio), sr, True, start, duration))
    return (np.concatenate(head) if head else np.zeros(0, np.float32)), None


class _Decodes:
    """Calls give the samples of a decode: first the one under way (its blocks so far, then the rest),
    then fresh ones."""

    def __init__(self, head: list, rest, fresh):
        self.first, self.fresh = (head, rest), fresh

    def __call__(self):
        if self.first is None:
            return self.fresh()
        head, rest = self.first
        self.first = None
        return _prepend_all(head, rest)


def analyze(audio, fps: float = 30.0, start: float | None = None, duration: float | None = None,
            n_sections: int | None = None, block_frames: int = BLOCK_FRAMES) -> AudioFeatures:
    """Decode `audio` (path or (samples, rate)) and compute every feature on the frame grid at `fps`.

    fps: frames per second, MIN_FPS to MAX_FPS (1 to 240). start / duration (seconds) select a window
    of the song, clipped to it; only the window is decoded. A window longer than `block_frames` STFT
    frames (29.7 s) is analysed in blocks (see `_feature_pass`), and one longer than IN_MEMORY
    seconds (10 min) is decoded block by block, twice, so memory grows only with the per-frame
    features (about 0.6 MB a minute), not with the samples. Raises MusicvizError on bad input.
    """
    import librosa

    if fps is None or not MIN_FPS <= fps <= MAX_FPS:  # nan fails both comparisons
        raise MusicvizError(f"fps must be from {MIN_FPS:g} to {MAX_FPS:g}, got {fps}")
    check_window(start, duration)
    sr = SAMPLE_RATE
    y, blocks = _analysis_signal(audio, start, duration, sr)
    g = None
    if y is None:  # long: a first pass finds the song's length, peak, loudest bins and tuning
        g = _whole_song(_Reader(blocks()), sr, *_fast_kernels()[:2])
        length = g["length"]
    else:
        length = len(y)
    seconds = length / sr
    n = frame_count(seconds, fps)
    if n < 1:
        raise MusicvizError(f"audio is too short: {seconds:.3f} s is less than one frame at {fps:g} fps")
    n_samples = max(length, N_FFT)  # a shorter signal is padded with silence
    n_fr = 1 + n_samples // HOP
    if y is not None and n_fr > block_frames:
        g = _whole_song(_Reader([y]), sr, *_fast_kernels()[:2])
    f, g = _feature_pass(_Reader([y] if y is not None else blocks()), n_samples, g, sr, block_frames)
    del y
    times = np.arange(n) / fps
    ft = librosa.frames_to_time(np.arange(n_fr), sr=sr, hop_length=HOP)
    silent = g["peak"] < SILENCE

    tempo, beats, onsets, confidence = 0.0, np.zeros(0, dtype=int), np.zeros(0, dtype=int), 0.0
    if not silent:
        tempo, beats, confidence = _beats(f.percussive, f.onsets, sr, seconds)
        onsets = librosa.onset.onset_detect(onset_envelope=f.onsets, sr=sr, hop_length=HOP, backtrack=True,
                                            energy=f.rms)
    chroma_grid = np.clip(_on_grid(f.chroma.T, ft, times), 0, 1)
    chroma_delta = np.diff(chroma_grid, axis=0, prepend=chroma_grid[:1])
    bands = {name: _norm(_on_grid(f.bands[name], ft, times)) for name in BANDS}
    sections = np.zeros(1)
    if not silent and seconds >= 20:
        sections = _sections(f, n_sections or int(np.clip(round(seconds / 30), 2, 8)), sr)

    beat_times = librosa.frames_to_time(beats, sr=sr, hop_length=HOP)
    onset_times = librosa.frames_to_time(onsets, sr=sr, hop_length=HOP)
    if len(beat_times) >= 2:
        reach = min(0.16, 0.35 * float(np.median(np.diff(beat_times))))
        beat_times = _refine_on_envelope(beat_times, f.attack, sr, before=reach, after=reach)
    mel_db = librosa.power_to_db(f.mel, ref=1.0)
    return AudioFeatures(
        fps=float(fps),
        duration=seconds,
        n_frames=n,
        tempo=tempo,
        beat_times=beat_times[beat_times < seconds],
        onset_times=onset_times[onset_times < seconds],
        loudness=_norm(_on_grid(f.rms, ft, times)),
        mel_power=_norm(_on_grid(mel_db, ft, times)),
        onset_strength=_norm(_on_grid(f.percussive, ft, times)),
        chroma=chroma_grid,
        chroma_delta=chroma_delta,
        bands=bands,
        section_times=sections,
        beat_confidence=confidence,
        onset_salience=onset_salience(f.percussive, onsets)[onset_times < seconds],
    )


def _beats(onset_env: np.ndarray, whole_env: np.ndarray, sr: int, seconds: float) -> tuple[float, np.ndarray, float]:
    """(tempo in BPM, beat frames, beat confidence) from the percussive onset envelope; no beat grid
    (0 BPM, no beats) where the pulse is too weak for a steady beat (see `beat_confidence`).

    The confidence is the lesser of the percussive envelope's and the whole sound's (`whole_env`): the
    percussive one is in dB below its own loudest bin, which in music with no percussion (a drone, held
    chords) magnifies the slow beating of close partials into what looks like a pulse."""
    if not onset_env.any():
        return 0.0, np.zeros(0, dtype=int), 0.0
    confidence = min(beat_confidence(onset_env, sr), beat_confidence(whole_env, sr))
    if confidence < STEADY_BEAT and seconds >= PULSE_EVIDENCE:
        return 0.0, np.zeros(0, dtype=int), confidence
    tempo = _tempo(onset_env, sr)
    beats = track_beats(onset_env, tempo, sr / HOP)
    if len(beats) < 2:
        return 0.0, np.zeros(0, dtype=int), confidence
    return tempo, beats, confidence


def track_beats(onset_env: np.ndarray, bpm: float, frame_rate: float, tightness: float = 100.0) -> np.ndarray:
    """Beat frames of an onset envelope at `bpm`: librosa.beat.beat_track's dynamic programme (Ellis
    2007) with its defaults (tightness 100, weak leading and trailing beats trimmed), step for step, so
    the same beats; `frame_rate` is envelope values per second. Its own cached numba kernels stand in
    for librosa.beat's, which compile at every import."""
    if not onset_env.any():
        return np.zeros(0, dtype=int)
    _, _, local_score, dp = _fast_kernels()
    env = np.asarray(onset_env, dtype=np.float32)
    normed = (env / (env.std(ddof=1) + np.finfo(env.dtype).tiny)).astype(np.float64)
    period = np.round(frame_rate * 60.0 / np.array([bpm], dtype=np.float64))
    score = np.zeros(len(env))
    local_score(normed, period[0], score)
    backlink = np.zeros(len(env), np.int32)
    cumulative = np.zeros(len(env))
    dp(score, period[0], np.float32(tightness), backlink, cumulative)
    peaks = np.zeros(len(env), dtype=bool)  # librosa.util.localmax: > left, >= right; never the first
    peaks[1:-1] = (cumulative[1:-1] > cumulative[:-2]) & (cumulative[1:-1] >= cumulative[2:])
    peaks[-1] = len(env) > 1 and cumulative[-1] > cumulative[-2]
    threshold = 0.5 * np.ma.getdata(np.ma.median(np.ma.masked_array(cumulative, mask=~peaks)))
    tail = len(cumulative) - 1
    for n in range(len(cumulative) - 1, -1, -1):
        if peaks[n] and cumulative[n] >= threshold:
            tail = n
            break
    beats = np.zeros(len(env), dtype=bool)
    n = tail
    while n >= 0:
        beats[n] = True
        n = backlink[n]
    window = np.hanning(5)
    smooth = np.convolve(score[beats], window)[len(window) // 2:len(score) + len(window) // 2]
    floor = 0.5 * ((smooth**2).mean() ** 0.5)
    weak = score <= floor
    lead = int(np.argmin(weak)) if not weak.all() else len(score)
    trail = int(np.argmin(weak[::-1])) if not weak.all() else len(score)
    beats[:lead] = False
    beats[len(score) - trail:] = False
    return np.flatnonzero(beats)


def _beat_local_score(onsets, period, out):
    """librosa's beat local score at a steady tempo: the onsets convolved ('same') with a Gaussian of
    period / 32 frames, as its loop computes it (term by term, in this order)."""
    window = np.exp(-0.5 * (np.arange(-period, period + 1) * 32.0 / period) ** 2)
    k_n = len(window)
    n = len(onsets)
    for i in range(n):
        out[i] = 0.0
        for k in range(max(0, i + k_n // 2 - n + 1), min(i + k_n // 2, k_n)):
            out[i] += window[k] * onsets[i + k_n // 2 - k]


def _beat_dp(score, period, tightness, backlink, cumulative):
    """librosa's beat-tracking dynamic programme at a steady tempo (its __beat_track_dp)."""
    threshold = 0.01 * score.max()
    first_beat = True
    backlink[0] = -1
    cumulative[0] = score[0]
    for i in range(len(score)):
        score_i = score[i]
        best = -np.inf
        location = -1
        for loc in range(i - np.round(period / 2), i - 2 * period - 1, -1):
            if loc < 0:
                break
            value = cumulative[loc] - tightness * (np.log(i - loc) - np.log(period)) ** 2
            if value > best:
                best = value
                location = loc
        cumulative[i] = score_i + best if location >= 0 else score_i
        if first_beat and score_i < threshold:
            backlink[i] = -1
        else:
            backlink[i] = location
            first_beat = False


def onset_salience(onset_env: np.ndarray, onsets: np.ndarray) -> np.ndarray:
    """How much each onset (frame, backtracked) stands out: the peak of the percussive onset envelope
    (mean rise of the spectrum in dB per frame) within 70 ms after it, above the envelope's median,
    over 10 dB, clipped to [0, 1]. Noise's and drones' onsets score under 0.1, notes and hits near 1."""
    if len(onsets) == 0:
        return np.zeros(0)
    reach = int(round(0.07 * SAMPLE_RATE / HOP))
    peaks = np.array([onset_env[k:k + reach + 1].max(initial=0.0) for k in onsets])
    return np.clip((peaks - np.median(onset_env)) / 10.0, 0.0, 1.0)


STEADY_BEAT = 0.2  # beat confidence below which there is no steady beat (noise and drones: 0.13 to 0.17)
PULSE_EVIDENCE = 16.0  # seconds: a shorter signal keeps its beats whatever its confidence (two windows)


def beat_confidence(onset_envelope: np.ndarray, sr: int = SAMPLE_RATE, hop_length: int = HOP) -> float:
    """How clearly an onset strength envelope (one value every `hop_length` samples at `sr` Hz) pulses
    at a steady beat: from 0 (no pulse) to 1 (a click track).

    The envelope less its 0.5 s moving average keeps the onsets and drops slow swells of loudness. In
    8 s Hann windows, one every 32 frames, its autocorrelation at the strongest lag from 0.25 to 1.5 s
    (240 to 40 BPM), over that at lag 0, is the share of the onset energy that comes back a beat
    later; windows count by their energy. Noise, drones and whale-like calls give 0.13 to 0.17, a
    string orchestra's dance 0.27, pop 0.5, a click track 0.9. An envelope with no onsets (a steady
    tone's ripples of 0.001 dB) gives 0.
    """
    import scipy.fft
    from numpy.lib.stride_tricks import sliding_window_view
    from scipy.ndimage import uniform_filter1d

    rate = sr / hop_length
    env = np.asarray(onset_envelope, np.float64)
    rise = env - uniform_filter1d(env, int(round(0.5 * rate)) | 1, mode="nearest")
    if len(rise) == 0 or np.sqrt(np.mean(rise**2)) < 0.05:
        return 0.0
    win = int(round(8.0 * rate))
    lo, hi = int(round(0.25 * rate)), int(round(1.5 * rate)) + 1
    rise = np.pad(rise, (0, max(0, win - len(rise))))
    frames = sliding_window_view(rise, win)[::32]
    window = np.hanning(win)
    size = 1 << int(np.ceil(np.log2(2 * win - 1)))
    repeat = energy = 0.0
    for s in range(0, len(frames), 1024):
        spec = scipy.fft.rfft(frames[s:s + 1024] * window, n=size, axis=-1)
        ac = scipy.fft.irfft(spec.real**2 + spec.imag**2, n=size, axis=-1)
        repeat += float(ac[:, lo:hi].max(axis=1).sum())
        energy += float(ac[:, 0].sum())
    return float(np.clip(repeat / energy, 0.0, 1.0)) if energy > 0 else 0.0


def _sections(f: _Features, k: int, sr: int) -> np.ndarray:
    """Section starts (seconds, the first 0): agglomerative segmentation into k parts of the MFCCs of
    the mel spectrum averaged over steps of f.pool frames (at least 93 ms; at most 4096 steps, so a
    long song is segmented as quickly as a short one)."""
    import librosa

    counts = np.minimum(f.pool, len(f.rms) - np.arange(len(f.mel_pool)) * f.pool)
    mel = (f.mel_pool / counts[:, None]).T
    feats = librosa.util.normalize(librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=13), axis=1)
    bounds = librosa.segment.agglomerative(feats, min(k, feats.shape[1]))
    return np.unique(np.concatenate([[0.0], bounds * f.pool * HOP / sr]))
