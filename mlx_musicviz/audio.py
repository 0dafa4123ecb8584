"""Audio decoding and librosa features on the video frame grid.

Video frame k is at exactly k / fps seconds for the whole song; features computed on librosa's
own hop grid are interpolated (or, for events, rounded) onto it, so nothing drifts.
Pure numpy arrays; no model needed.
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
    samples, rate = np.asarray(audio[0]), audio[1]
    try:
        rate = int(rate)
    except (TypeError, ValueError, OverflowError):
        raise MusicvizError(f"sample rate must be a whole number of Hz, got {rate!r}") from None
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
    (see `sample_pair`); start and duration are in seconds.
    """
    check_window(start, duration)
    if is_sample_pair(audio):
        samples, rate = sample_pair(audio)
        samples = samples.mean(axis=0)
        y = samples if rate == sr else _resample(samples, rate, sr)
    else:
        y = decode_file(Path(audio), sr)
    return y[window_samples(start, duration, sr, len(y))], sr


def _resample(y: np.ndarray, rate: int, sr: int) -> np.ndarray:
    import librosa

    return librosa.resample(y, orig_sr=rate, target_sr=sr, res_type="soxr_hq")


def decode_file(path: Path, sr: int = SAMPLE_RATE, mono: bool = True) -> np.ndarray:
    """Decode the first audio stream of a file to float32 at `sr` Hz with PyAV.

    Mono: shape (n,); otherwise (channels, n) with up to two channels (stereo)."""
    import av

    if not path.exists():
        raise MusicvizError(f"audio file not found: {path}")
    if path.is_dir():
        raise MusicvizError(f"{path} is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise MusicvizError(f"audio file is empty: {path}")
    chunks = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MusicvizError(f"{path} has no audio stream")
            stream = container.streams.audio[0]
            channels = 1 if mono or stream.channels < 2 else 2
            resampler = av.AudioResampler(format="fltp", layout="mono" if channels == 1 else "stereo", rate=sr)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(channels, -1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(channels, -1))
    except MusicvizError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as e:
        if not chunks:
            raise MusicvizError(f"cannot decode {path}: not a readable audio file ({type(e).__name__})") from None
        # A truncated file: keep what decoded.
    if not chunks:
        raise MusicvizError(f"{path} holds no decodable audio")
    y = finite_samples(np.concatenate(chunks, axis=1))
    return y[0] if mono else y


@dataclass
class AudioFeatures:
    """Features on the video frame grid: row k describes time k / fps (seconds)."""

    fps: float
    duration: float  # seconds
    n_frames: int
    tempo: float  # beats per minute (0 when no beat was found)
    beat_times: np.ndarray  # seconds
    onset_times: np.ndarray  # seconds, backtracked to the preceding energy minimum
    loudness: np.ndarray  # (n_frames,) RMS, normalised to [0, 1]
    mel_power: np.ndarray  # (n_frames,) mean mel power in dB, normalised to [0, 1]
    onset_strength: np.ndarray  # (n_frames,) percussive onset strength, normalised to [0, 1]
    chroma: np.ndarray  # (n_frames, 12) CQT chroma in [0, 1], C first
    chroma_delta: np.ndarray  # (n_frames, 12) change of chroma per frame
    bands: dict = field(default_factory=dict)  # name -> (n_frames,) energy in [0, 1]
    section_times: np.ndarray = field(default_factory=lambda: np.zeros(0))  # section starts (seconds), first is 0

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


def refine_to_attacks(beat_times: np.ndarray, y: np.ndarray, sr: int, before: float = 0.06, after: float = 0.03) -> np.ndarray:
    """Move each beat (seconds) to the sharpest energy rise within [beat - before, beat + after].

    The beat tracker places beats on onset-envelope peaks, which trail the attack by a frame or
    two of its 2048-sample window; a 1.5 ms energy envelope finds the attack itself.
    """
    import librosa

    if len(beat_times) == 0:
        return beat_times
    hop = 32
    env = librosa.feature.rms(y=y, frame_length=256, hop_length=hop, center=True)[0]
    rise = np.diff(np.log(env + 1e-6), prepend=np.log(env[0] + 1e-6))
    out = np.array(beat_times, dtype=np.float64)
    for i, b in enumerate(beat_times):
        lo, hi = int((b - before) * sr / hop), int((b + after) * sr / hop) + 1
        lo, hi = max(lo, 0), min(hi, len(rise))
        if hi - lo > 1:
            out[i] = (lo + int(np.argmax(rise[lo:hi]))) * hop / sr
    return out


def analyze(audio, fps: float = 30.0, start: float | None = None, duration: float | None = None,
            n_sections: int | None = None) -> AudioFeatures:
    """Decode `audio` (path or (samples, rate)) and compute every feature on the frame grid at `fps`.

    fps: frames per second, MIN_FPS to MAX_FPS (1 to 240). start / duration (seconds) select a window
    of the song, clipped to it. Raises MusicvizError on bad input.
    """
    import librosa

    if fps is None or not MIN_FPS <= fps <= MAX_FPS:  # nan fails both comparisons
        raise MusicvizError(f"fps must be from {MIN_FPS:g} to {MAX_FPS:g}, got {fps}")
    y, sr = load_audio(audio, SAMPLE_RATE, start, duration)
    seconds = len(y) / sr
    n = frame_count(seconds, fps)
    if n < 1:
        raise MusicvizError(f"audio is too short: {seconds:.3f} s is less than one frame at {fps:g} fps")
    times = np.arange(n) / fps
    silent = float(np.max(np.abs(y))) < 1e-6 if len(y) else True
    if len(y) < 2048:
        y = np.pad(y, (0, 2048 - len(y)))

    stft = np.abs(librosa.stft(y, n_fft=2048, hop_length=HOP))
    ft = librosa.frames_to_time(np.arange(stft.shape[1]), sr=sr, hop_length=HOP)
    harmonic, percussive = librosa.decompose.hpss(stft)
    mel = librosa.feature.melspectrogram(S=stft**2, sr=sr)
    mel_db = librosa.power_to_db(mel.mean(axis=0), ref=1.0)
    rms = librosa.feature.rms(S=stft, frame_length=2048)[0]
    onset_env = librosa.onset.onset_strength(S=librosa.amplitude_to_db(percussive, ref=np.max), sr=sr, hop_length=HOP)

    tempo, beats = 0.0, np.zeros(0, dtype=int)
    onsets = np.zeros(0, dtype=int)
    if not silent:
        tempo_arr, beats = librosa.beat.beat_track(onset_envelope=onset_env, sr=sr, hop_length=HOP, units="frames")
        tempo = float(np.atleast_1d(tempo_arr)[0]) if len(beats) >= 2 else 0.0
        beats = beats if len(beats) >= 2 else np.zeros(0, dtype=int)
        full_env = librosa.onset.onset_strength(S=librosa.amplitude_to_db(stft, ref=np.max), sr=sr, hop_length=HOP)
        onsets = librosa.onset.onset_detect(onset_envelope=full_env, sr=sr, hop_length=HOP, backtrack=True,
                                            energy=rms)

    if silent:
        chroma = np.zeros((12, stft.shape[1]))
    else:
        y_harm = librosa.istft(harmonic * np.exp(1j * np.angle(librosa.stft(y, n_fft=2048, hop_length=HOP))),
                               hop_length=HOP, length=len(y))
        with warnings.catch_warnings():  # short clips (the lowest CQT octaves are shorter than their FFT)
            warnings.filterwarnings("ignore", message="n_fft=.* is too large", category=UserWarning)
            # and clicks or noise (no pitched peak to estimate tuning from: librosa then assumes A440)
            warnings.filterwarnings("ignore", message="Trying to estimate tuning", category=UserWarning)
            chroma = librosa.feature.chroma_cqt(y=y_harm, sr=sr, hop_length=HOP)
    chroma = np.nan_to_num(chroma)[:, : len(ft)]
    ct = ft[: chroma.shape[1]]
    chroma_grid = np.clip(_on_grid(chroma.T, ct, times), 0, 1)
    chroma_delta = np.diff(chroma_grid, axis=0, prepend=chroma_grid[:1])

    freqs = librosa.fft_frequencies(sr=sr, n_fft=2048)
    bands = {}
    for name, (lo, hi) in BANDS.items():
        sel = (freqs >= lo) & (freqs < hi)
        bands[name] = _norm(_on_grid(np.sqrt((stft[sel] ** 2).mean(axis=0)), ft, times))

    sections = np.zeros(1)
    if not silent and seconds >= 20:
        k = n_sections or int(np.clip(round(seconds / 30), 2, 8))
        feats = librosa.util.normalize(librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=13), axis=1)
        bounds = librosa.segment.agglomerative(feats, k)
        sections = np.unique(np.concatenate([[0.0], librosa.frames_to_time(bounds, sr=sr, hop_length=HOP)]))

    beat_times = librosa.frames_to_time(beats, sr=sr, hop_length=HOP)
    onset_times = librosa.frames_to_time(onsets, sr=sr, hop_length=HOP)
    if len(beat_times) >= 2:
        reach = min(0.16, 0.35 * float(np.median(np.diff(beat_times))))
        beat_times = refine_to_attacks(beat_times, y, sr, before=reach, after=reach)
    return AudioFeatures(
        fps=float(fps),
        duration=seconds,
        n_frames=n,
        tempo=tempo,
        beat_times=beat_times[beat_times < seconds],
        onset_times=onset_times[onset_times < seconds],
        loudness=_norm(_on_grid(rms, ft, times)),
        mel_power=_norm(_on_grid(mel_db, ft, times)),
        onset_strength=_norm(_on_grid(onset_env[: len(ft)], ft[: len(onset_env)], times)),
        chroma=chroma_grid,
        chroma_delta=chroma_delta,
        bands=bands,
        section_times=sections,
    )
