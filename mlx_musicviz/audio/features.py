"""`analyze`: every feature of a song on the video frame grid, in `AudioFeatures`.

Video frame k is at exactly k / fps seconds for the whole song; features computed on librosa's
own hop grid are interpolated (or, for events, rounded) onto it, so nothing drifts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MusicvizError
from .beats import _beats, onset_salience
from .decode import (
    SAMPLE_RATE,
    _prepend_all,
    check_window,
    decode_blocks,
    is_sample_pair,
    load_audio,
    sample_pair,
)
from .filters import frames_to_time, power_to_db
from .grid import HOP, N_FFT
from .numba_kernels import analysed, fast_kernels, kernels
from .onsets import onset_backtrack, onset_detect
from .segments import agglomerative, mfcc_sequence
from .spectral import (
    ATTACK_FRAME,
    ATTACK_HOP,
    BANDS,
    BLOCK_FRAMES,
    IN_MEMORY,
    SILENCE,
    _feature_pass,
    _Features,
    _Reader,
    _whole_song,
)

MIN_FPS, MAX_FPS = 1.0, 240.0  # video frame rates: a frame a second to the fastest displays' rate
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


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
    if duration is None or features.n_frames >= frame_count(duration, features.fps) \
            or features.duration >= duration - 1.0 / SAMPLE_RATE:  # the window's samples were all there
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
    from numpy.lib.stride_tricks import sliding_window_view

    if len(beat_times) == 0:
        return beat_times
    frames = sliding_window_view(np.pad(np.asarray(y, np.float32), ATTACK_FRAME // 2), ATTACK_FRAME)[::ATTACK_HOP]
    return _refine_on_envelope(beat_times, np.sqrt(np.mean(np.square(frames), axis=1)), sr, before, after)




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


def _song_seconds(audio, sr: int) -> float:
    """The whole song's length in seconds, decoded block by block (bounded memory)."""
    if is_sample_pair(audio):
        y, rate = sample_pair(audio)
        return y.shape[-1] / rate
    return sum(len(block) for block in decode_blocks(Path(audio), sr, True)) / sr


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
    if fps is None or not MIN_FPS <= fps <= MAX_FPS:  # nan fails both comparisons
        raise MusicvizError(f"fps must be from {MIN_FPS:g} to {MAX_FPS:g}, got {fps}")
    check_window(start, duration)
    sr = SAMPLE_RATE
    y, blocks = _analysis_signal(audio, start, duration, sr)
    g = None
    if y is None:  # long: a first pass finds the song's length, peak, loudest bins and tuning
        g = _whole_song(_Reader(blocks()), sr, *fast_kernels()[:2])
        length = g["length"]
    else:
        length = len(y)
    seconds = length / sr
    n = frame_count(seconds, fps)
    if n < 1 and length == 0 and start:
        song = _song_seconds(audio, sr)
        raise MusicvizError(f"audio is too short: start {start:g} s is past the end of the song, which is "
                            f"{song:.3f} s long")
    if n < 1:
        raise MusicvizError(f"audio is too short: {seconds:.3f} s is less than one frame at {fps:g} fps")
    n_samples = max(length, N_FFT)  # a shorter signal is padded with silence
    n_fr = 1 + n_samples // HOP
    if y is not None and n_fr > block_frames:
        g = _whole_song(_Reader([y]), sr, *kernels(n_fr)[:2])
    f, g = _feature_pass(_Reader([y] if y is not None else blocks()), n_samples, g, sr, block_frames)
    del y
    times = np.arange(n) / fps
    ft = frames_to_time(np.arange(n_fr), sr, HOP)
    silent = g["peak"] < SILENCE

    tempo, beats, onsets, confidence = 0.0, np.zeros(0, dtype=int), np.zeros(0, dtype=int), 0.0
    if not silent:
        tempo, beats, confidence = _beats(f.percussive, f.onsets, sr, seconds)
        onsets = _onsets(f.onsets, f.rms, sr)
    chroma_grid = np.clip(_on_grid(f.chroma.T, ft, times), 0, 1)
    chroma_delta = np.diff(chroma_grid, axis=0, prepend=chroma_grid[:1])
    bands = {name: _norm(_on_grid(f.bands[name], ft, times)) for name in BANDS}
    sections = np.zeros(1)
    if not silent and seconds >= 20:
        sections = _sections(f, n_sections or int(np.clip(round(seconds / 30), 2, 8)), sr)

    beat_times = frames_to_time(beats, sr, HOP)
    onset_times = frames_to_time(onsets, sr, HOP)
    if len(beat_times) >= 2:
        reach = min(0.16, 0.35 * float(np.median(np.diff(beat_times))))
        beat_times = _refine_on_envelope(beat_times, f.attack, sr, before=reach, after=reach)
    mel_db = power_to_db(f.mel)
    analysed()  # the process analyses again: numba's kernels from now on
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


MIN_ONSET_RISE = 0.5  # dB: an onset's peak at least this mean rise over the spectrum is an onset (music's: 1 to 9) ...
STANDOUT = 20.0  # ... and so is one this many times the envelope's median: a tone's start over steady sound (the
#                  peaks of held tones' beating, which are neither, rise 0.04 to 0.1 dB, 2 to 5 times the median)


def _onsets(envelope: np.ndarray, rms: np.ndarray, sr: int) -> np.ndarray:
    """Onset frames as librosa.onset.onset_detect(backtrack=True) finds them (its peak picking on the
    whole sound's onset envelope, each peak moved back to the quietest frame before it), less the peaks
    it would find in the ripples of a held chord (under MIN_ONSET_RISE and under STANDOUT times the
    median); two peaks moved back to the same frame are one onset."""
    peaks = onset_detect(envelope, sr, HOP)
    peaks = peaks[(envelope[peaks] >= MIN_ONSET_RISE) | (envelope[peaks] >= STANDOUT * np.median(envelope))]
    return np.unique(onset_backtrack(peaks, rms)) if len(peaks) else peaks


def _sections(f: _Features, k: int, sr: int) -> np.ndarray:
    """Section starts (seconds, the first 0): agglomerative segmentation into k parts of the MFCCs of
    the mel spectrum averaged over steps of f.pool frames (at least 93 ms; at most 4096 steps, so a
    long song is segmented as quickly as a short one)."""
    counts = np.minimum(f.pool, len(f.rms) - np.arange(len(f.mel_pool)) * f.pool)
    feats = mfcc_sequence((f.mel_pool / counts[:, None]).T)
    bounds = agglomerative(feats, min(k, feats.shape[1]))
    return np.unique(np.concatenate([[0.0], bounds * f.pool * HOP / sr]))
