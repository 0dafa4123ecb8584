"""Causal audio analysis for live mode: features and beats from the samples heard so far.

`CausalAnalyzer` is fed successive blocks of mono samples (any block size) and returns one `Frame`
per analysis hop (256 samples at 22050 Hz: 11.6 ms; the same duration at other rates) with
loudness, onset strength, the three `audio.BANDS`, chroma, and a real-time beat tracker's tempo,
phase and beats. Nothing looks ahead: frame t uses the samples up to the end of its hop and is
stamped at the hop's centre, so a frame at time T depends on no sample after T + `lookahead_s`
(half a hop, 5.8 ms).

The beat tracker is our own, on librosa-style onset strength (spectral flux of the log-mel
spectrum): the tempo comes from an exponentially weighted autocorrelation of the onset envelope
(a sliding window of a few seconds, so it follows tempo changes), the phase from a cumulative
beat score with a prediction of the next beat half a beat ahead (Stark, Davies & Plumbley's
BTrack scheme). A prediction is what live mode needs anyway: `next_beats` gives the coming beats
so that frames can be made before the beat lands. The maintained-looking alternatives on PyPI do
not fit: madmom (last release 2018) and aubio (2019) have no wheels for current Pythons and
numpy 2, and BeatNet needs torch, madmom and PyAudio.

`analyze_live` runs the analyzer over a whole file, faster than real time, and returns what live
mode would have seen of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audio import BANDS, HOP, SAMPLE_RATE, finite_samples, load_audio
from ..errors import MusicvizError

MIN_RATE, MAX_RATE = 8000, 384000  # sample rates (Hz) the analyzer accepts
N_FFT = 2048  # analysis window at SAMPLE_RATE (samples): 93 ms, as audio.analyze
N_MELS = 128  # mel bands of the onset strength, as librosa.onset.onset_strength
MIN_PULSE_RISE = 0.5  # dB: the least onset strength of an onset, and of one in the last 2 s for a beat
#                       (held chords: about 0.12 at most; the test recordings' 2 s windows: 1.35 or more)
TOP_DB = 80.0  # log-mel floor below the loudest frame so far (dB), as librosa's ref=np.max
SILENCE_RMS = 1e-3  # RMS (full scale 1) below which normalised levels read as silence: -60 dBFS


def beat_f_measure(reference, estimated, window: float = 0.07) -> float:
    """F-measure of `estimated` event times against `reference` times (seconds), each reference
    matched to at most one estimate within ±`window` seconds (MIREX beat evaluation; 0.07 s is
    its standard tolerance). 1.0 when both are empty, 0.0 when only one is."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    est = np.sort(np.asarray(estimated, dtype=np.float64))
    if len(ref) == 0 and len(est) == 0:
        return 1.0
    if len(ref) == 0 or len(est) == 0:
        return 0.0
    used = np.zeros(len(est), dtype=bool)
    hits = 0
    for r in ref:  # greedy in time order is optimal for a window narrower than half the spacing
        free = np.flatnonzero(~used & (np.abs(est - r) <= window))
        if len(free):
            used[free[np.argmin(np.abs(est[free] - r))]] = True
            hits += 1
    precision, recall = hits / len(est), hits / len(ref)
    return 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Frame:
    """What the analyzer knows at one hop. Levels are normalised to [0, 1] by their loudest recent
    value (an automatic gain whose memory halves every 15 s), with SILENCE_RMS as the least full
    scale, so a quiet input still moves the visuals and silence stays dark."""

    time: float  # seconds from the stream's first sample: the centre of this frame's newest hop
    rms: float  # RMS of the analysis window (93 ms, Hann-weighted), full scale 1
    loudness: float  # rms normalised, [0, 1]
    onset: float  # onset strength (mean rise of the log-mel spectrum, dB) normalised, [0, 1]
    bands: dict  # name (audio.BANDS) -> band RMS normalised, [0, 1]
    chroma: np.ndarray  # (12,) energy per pitch class, C first, loudest class 1 (zeros in silence)
    tempo: float  # beats per minute, 0 while unknown
    phase: float  # fraction [0, 1) of the current beat period elapsed since the last beat
    beat: bool  # a beat falls on this frame
    onset_event: bool  # an onset starts on this frame


class _Gain:
    """Automatic gain: value / (its largest recent value), the largest decaying by half every
    `half_life` frames and never below `floor` (so noise in silence stays low)."""

    def __init__(self, half_life: float, floor: float):
        self.decay = 0.5 ** (1.0 / half_life)
        self.floor = floor
        self.peak = floor

    def __call__(self, value: float) -> float:
        self.peak = max(value, self.peak * self.decay, self.floor)
        return min(value / self.peak, 1.0)


class _Spectra:
    """Per-hop spectral features of a sample stream: frame t is the `n_fft` samples ending with
    the t-th hop (the stream is preceded by silence), so it needs no later sample."""

    def __init__(self, rate: int):
        import scipy.sparse

        from ..audio import filters

        self.hop = max(1, int(round(rate * HOP / SAMPLE_RATE)))
        self.n_fft = 2 ** int(round(np.log2(rate * N_FFT / SAMPLE_RATE)))
        self.window = np.hanning(self.n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
        self.buffer = np.zeros(self.n_fft - self.hop, np.float32)
        # Sparse mel and a BLAS-free chroma product: multi-threaded BLAS on a few frames is slow
        # on a busy machine, and these give every frame the same result whatever the block size.
        self.mel = scipy.sparse.csr_matrix(filters.mel(rate, self.n_fft, N_MELS))
        self.chroma = filters.chroma(rate, self.n_fft).T
        freqs = np.fft.rfftfreq(self.n_fft, 1.0 / rate)
        self.bands = {name: (freqs >= lo) & (freqs < hi) for name, (lo, hi) in BANDS.items()}
        # |X|^2 -> mean square of the signal (Parseval, one-sided spectrum, window power removed)
        self.power_scale = 2.0 / (self.n_fft * float(np.sum(self.window.astype(np.float64) ** 2)))
        self.peak_db = -100.0  # loudest log-mel value so far (dB)
        self.last_db = None  # previous frame's log-mel spectrum (dB)

    def frames(self, samples: np.ndarray) -> dict | None:
        """Features of every frame that `samples` (appended to the stream) completes, or None."""
        self.buffer = np.concatenate([self.buffer, samples])
        n = (len(self.buffer) - (self.n_fft - self.hop)) // self.hop
        if n <= 0:
            return None
        index = np.arange(self.n_fft)[None, :] + self.hop * np.arange(n)[:, None]
        windowed = self.buffer[index] * self.window
        self.buffer = self.buffer[n * self.hop:]
        power = (np.abs(np.fft.rfft(windowed, axis=1)) ** 2 * self.power_scale).astype(np.float32)
        out = {"rms": np.sqrt(power.sum(axis=1)), "onset": self._flux((self.mel @ power.T).T)}
        out["bands"] = {name: np.sqrt(power[:, sel].sum(axis=1)) for name, sel in self.bands.items()}
        chroma = np.einsum("fb,bc->fc", power, self.chroma, optimize=False)
        loud = chroma.max(axis=1, keepdims=True)
        out["chroma"] = np.where(out["rms"][:, None] > SILENCE_RMS / 10, chroma / np.maximum(loud, 1e-20), 0.0)
        return out

    def _flux(self, mel: np.ndarray) -> np.ndarray:
        """Onset strength per frame: the mean rise (dB) of the log-mel spectrum since the frame
        before, with a floor TOP_DB below the loudest value so far (librosa's, made causal)."""
        db = 10.0 * np.log10(np.maximum(mel, 1e-10))
        peak = np.maximum.accumulate(np.maximum(db.max(axis=1), self.peak_db))
        self.peak_db = float(peak[-1])
        db = np.maximum(db, (peak - TOP_DB)[:, None])
        before = np.concatenate([db[:1] if self.last_db is None else self.last_db[None], db[:-1]])
        self.last_db = db[-1]
        return np.maximum(db - before, 0.0).mean(axis=1)


class _Tempo:
    """Tempo from an exponentially weighted autocorrelation of the onset envelope.

    A candidate period scores the mean autocorrelation at its first four multiples (a pulse
    repeats at all of them); slightly favouring faster candidates picks a click track's own rate
    over its half (which scores the same), and a switch needs a clearly better score (hysteresis)."""

    MULTIPLES = np.arange(1, 5)
    FASTER = 0.15  # exponent of the preference for faster tempi: (bpm / 120) ** FASTER
    SWITCH = 1.25  # a new tempo must score this many times the current one
    NEAR = 0.04  # relative tempo change counted as following the current tempo

    def __init__(self, frame_rate: float, min_bpm: float, max_bpm: float, memory_s: float):
        self.frame_rate = frame_rate
        steps = int(np.ceil(np.log(max_bpm / min_bpm) / np.log(1.005))) + 1
        self.bpms = np.geomspace(min_bpm, max_bpm, steps)
        self.lags = (60.0 * frame_rate / self.bpms)[:, None] * self.MULTIPLES[None, :]
        self.history = np.zeros(int(np.ceil(self.lags.max())) + 2)  # newest first
        self.ac = np.zeros_like(self.history)
        self.keep = float(np.exp(-1.0 / (memory_s * frame_rate)))
        self.preference = (self.bpms / 120.0) ** self.FASTER
        self.bpm = 0.0

    def update(self, x: float) -> float:
        """Take the next onset-envelope value; return the tempo (bpm, 0 while unknown)."""
        self.history = np.concatenate([[x], self.history[:-1]])
        self.ac += (1.0 - self.keep) * (x * self.history - self.ac)
        if self.ac[0] <= 1e-12:
            return self.bpm
        ac = self.ac / self.ac[0]
        salience = np.interp(self.lags, np.arange(len(ac)), ac).mean(axis=1)
        score = salience * self.preference
        best = int(np.argmax(score))
        if self.bpm > 0:
            near = np.flatnonzero(np.abs(np.log(self.bpms / self.bpm)) <= self.NEAR)
            if len(near):
                current = int(near[np.argmax(score[near])])
                if score[best] < self.SWITCH * score[current]:
                    best = current
        if salience[best] > 0.05:
            self.bpm = self._refine(score, best)
        return self.bpm

    def _refine(self, score: np.ndarray, i: int) -> float:
        """The tempo at the parabola's vertex through the scores around grid point i."""
        if 0 < i < len(score) - 1:
            a, b, c = score[i - 1], score[i], score[i + 1]
            d = a - 2 * b + c
            if d < 0:
                step = np.log(self.bpms[1] / self.bpms[0])
                return float(self.bpms[i] * np.exp(np.clip(0.5 * (a - c) / d, -0.5, 0.5) * step))
        return float(self.bpms[i])


class _Beats:
    """Beat phase from a cumulative beat score (BTrack): each frame's score is its onset strength
    plus the best score one beat period earlier, weighted by how close to a period back it lies;
    half a beat after each beat, projecting the score forward predicts where the next one falls."""

    ALPHA = 0.9  # weight of the past in the cumulative score
    TIGHTNESS = 5.0  # how sharply the past score is weighted around one period back

    def __init__(self, max_period: float):
        self.score = np.zeros(int(np.ceil(2 * max_period)) + 2)  # newest last
        self.t = -1  # current frame
        self.last = None  # frame of the last beat
        self.next = None  # frame of the predicted next beat
        self.predict_at = None  # frame at which to predict the next beat

    def _best_past(self, scores: np.ndarray, end: int, period: float) -> float:
        """Best weighted score among scores[end - 2 period : end - period / 2] (end excluded)."""
        back = np.arange(max(1, int(round(period / 2))), int(round(2 * period)) + 1)
        back = back[back <= end]
        if len(back) == 0:
            return 0.0
        weight = np.exp(-0.5 * (self.TIGHTNESS * np.log(back / period)) ** 2)
        return float(np.max(weight * scores[end - back]))

    def update(self, onset: float, period: float) -> bool:
        """Take the next frame's onset strength and the beat period (frames, 0 while unknown);
        return whether a beat falls on this frame."""
        self.t += 1
        past = self._best_past(self.score, len(self.score), period) if period > 0 else 0.0
        self.score = np.concatenate([self.score[1:], [(1 - self.ALPHA) * onset + self.ALPHA * past]])
        if period <= 0:
            return False
        if self.predict_at is None or self.t >= self.predict_at:
            self._predict(period)
        if self.next is not None and self.t >= self.next:
            self.last, self.next = self.t, None
            self.predict_at = self.t + max(1, int(round(period / 2)))
            return True
        return False

    def _predict(self, period: float) -> None:
        """Schedule the next beat: the best projected cumulative score within a period ahead,
        weighted by a Gaussian around one period after the last beat."""
        ahead = max(1, int(round(period)))
        scores = np.concatenate([self.score, np.zeros(ahead)])
        now = len(self.score)
        for i in range(now, now + ahead):
            scores[i] = self._best_past(scores, i, period)
        expected = (self.last + period - self.t) if self.last is not None else period / 2
        steps = np.arange(1, ahead + 1)
        weight = np.exp(-0.5 * ((steps - expected) / (period / 2)) ** 2)
        self.next = self.t + int(steps[np.argmax(weight * scores[now:])])
        self.predict_at = self.next + max(1, int(round(period / 2)))


class CausalAnalyzer:
    """Features and beats of a live sample stream, one `Frame` per hop, with no look-ahead.

    rate: sample rate (Hz) of the blocks given to `process`. min_bpm / max_bpm: the tempo range
    (beats per minute). memory_s: time constant (seconds) of the tempo's sliding window; shorter
    follows tempo changes sooner, longer is steadier.
    """

    def __init__(self, rate: int, min_bpm: float = 50.0, max_bpm: float = 200.0, memory_s: float = 2.5):
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not MIN_RATE <= rate <= MAX_RATE:
            raise MusicvizError(f"sample rate must be a whole number of Hz from {MIN_RATE} to {MAX_RATE}, got {rate!r}")
        if not (20.0 <= min_bpm < max_bpm <= 400.0):
            raise MusicvizError(f"tempo range must satisfy 20 <= min_bpm < max_bpm <= 400, got {min_bpm}..{max_bpm}")
        if not 0.5 <= memory_s <= 30.0:
            raise MusicvizError(f"memory_s must be from 0.5 to 30 seconds, got {memory_s}")
        self.rate = int(rate)
        self.spectra = _Spectra(self.rate)
        self.hop = self.spectra.hop  # samples per frame
        self.frame_rate = self.rate / self.hop  # frames per second
        self.lookahead_s = 0.5 * self.hop / self.rate  # a frame's time to its last sample (seconds)
        self.tempo_tracker = _Tempo(self.frame_rate, min_bpm, max_bpm, memory_s)
        self.beats = _Beats(60.0 * self.frame_rate / min_bpm)
        minute = 60.0 * self.frame_rate
        self.gains = {"rms": _Gain(minute / 4, SILENCE_RMS), "onset": _Gain(minute / 4, 1.0),
                      **{name: _Gain(minute / 4, SILENCE_RMS) for name in BANDS}}
        self.recent_rms = np.zeros(int(round(2 * self.frame_rate)))  # the last 2 s, for beat gating
        self.recent_onset = np.zeros(len(self.recent_rms))  # the onset strength of the last 2 s, likewise
        self.onset_mean = 0.0  # running mean of the onset strength (about 0.2 s)
        self.onset_refractory = 0  # frames until another onset may start
        self.frames_done = 0
        self.samples_in = 0
        self.beat_times: list[float] = []  # seconds, every beat so far
        self.onset_times: list[float] = []  # seconds, every onset so far

    @property
    def tempo(self) -> float:
        """The current tempo estimate (beats per minute; 0 while unknown)."""
        return self.tempo_tracker.bpm

    @property
    def now(self) -> float:
        """Stream time (seconds) of the samples given so far."""
        return self.samples_in / self.rate

    def frame_time(self, index: int) -> float:
        """Time (seconds) of frame `index`: the centre of its newest hop."""
        return (index + 0.5) * self.hop / self.rate

    def process(self, block) -> list[Frame]:
        """Analyze the next block of samples (float, shape (n,) or (n, channels): averaged to
        mono); return the frames it completes, oldest first (none if it ends no hop)."""
        samples = self._mono(block)
        self.samples_in += len(samples)
        spectra = self.spectra.frames(samples)
        if spectra is None:
            return []
        return [self._frame(spectra, i) for i in range(len(spectra["rms"]))]

    @staticmethod
    def _mono(block) -> np.ndarray:
        samples = np.asarray(block)
        if samples.dtype.kind not in "f":
            raise MusicvizError(f"audio blocks must be float samples in [-1, 1], got {samples.dtype}")
        if samples.ndim == 2:
            samples = samples.mean(axis=1)
        elif samples.ndim != 1:
            raise MusicvizError(f"audio blocks must be (n,) or (n, channels), got shape {samples.shape}")
        return finite_samples(samples)

    def _frame(self, spectra: dict, i: int) -> Frame:
        index = self.frames_done
        self.frames_done += 1
        time = self.frame_time(index)
        rms, onset = float(spectra["rms"][i]), float(spectra["onset"][i])
        bpm = self.tempo_tracker.update(onset - self.onset_mean)
        period = 60.0 * self.frame_rate / bpm if bpm > 0 else 0.0
        self.recent_rms = np.concatenate([self.recent_rms[1:], [rms]])
        self.recent_onset = np.concatenate([self.recent_onset[1:], [onset]])
        beat = self.beats.update(onset, period) and self._active() and self._pulsing()
        if beat:
            self.beat_times.append(time)
        onset_event = self._onset_event(onset)
        if onset_event:
            self.onset_times.append(time)
        return Frame(
            time=time, rms=rms, loudness=self.gains["rms"](rms), onset=self.gains["onset"](onset),
            bands={name: self.gains[name](float(spectra["bands"][name][i])) for name in BANDS},
            chroma=spectra["chroma"][i].astype(np.float32), tempo=bpm, phase=self._phase(period),
            beat=beat, onset_event=onset_event,
        )

    def _active(self) -> bool:
        """Whether the last 2 s held sound: beats are not emitted in silence."""
        return float(self.recent_rms.max()) >= SILENCE_RMS / 10

    def _pulsing(self) -> bool:
        """Whether the last 2 s held a real onset (a rise of MIN_PULSE_RISE dB or more): a held chord's
        slowly beating partials rise about 0.12 dB and would otherwise be tracked as a steady beat."""
        return float(self.recent_onset.max()) >= MIN_PULSE_RISE

    def _onset_event(self, onset: float) -> bool:
        """An onset starts where the onset strength rises well above its running mean (no peak
        picking: that would wait for the next frame)."""
        threshold = self.onset_mean + 0.1 * self.gains["onset"].peak
        self.onset_mean += 0.05 * (onset - self.onset_mean)
        self.onset_refractory -= 1
        if onset > max(threshold, MIN_PULSE_RISE) and self.onset_refractory <= 0 and self._active():
            self.onset_refractory = int(round(0.05 * self.frame_rate))
            return True
        return False

    def _phase(self, period: float) -> float:
        if period <= 0 or self.beats.last is None:
            return 0.0
        return float(((self.beats.t - self.beats.last) / period) % 1.0)

    def next_beats(self, now: float, k: int = 4) -> np.ndarray:
        """The next `k` beat times (seconds of stream time) after `now`, as predicted from the
        scheduled next beat and the current tempo; empty while the tempo is unknown or the input
        has been silent for 2 s."""
        if self.tempo <= 0 or k <= 0 or not self._active():
            return np.zeros(0)
        period = 60.0 / self.tempo
        if self.beats.next is not None:
            first = self.frame_time(self.beats.next)
        elif self.beats.last is not None:
            first = self.frame_time(self.beats.last) + period
        else:
            return np.zeros(0)
        skip = max(0, int(np.floor((now - first) / period)) + 1) if first <= now else 0
        return first + period * (skip + np.arange(k))


def analyze_live(audio, block: int = 1024, **options) -> dict:
    """What live mode would see of a song: `CausalAnalyzer` fed `block` samples at a time.

    audio: a path or a (samples, rate) pair, analysed at audio.SAMPLE_RATE. options: passed to
    `CausalAnalyzer`. Returns JSON-ready lists: beat_times and onset_times (seconds), the tempo
    sampled ten times a second (tempo_times in seconds, tempo_bpm; 0 while unknown), and block
    (samples), rate (Hz), hop (samples), lookahead_s (seconds) and duration (seconds).
    """
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise MusicvizError(f"block must be a positive whole number of samples, got {block!r}")
    y, rate = load_audio(audio, SAMPLE_RATE)
    analyzer = CausalAnalyzer(rate, **options)
    every = max(1, int(round(analyzer.frame_rate / 10)))
    frames = (frame for start in range(0, len(y), block) for frame in analyzer.process(y[start:start + block]))
    tempo_times, tempo_bpm = [], []
    for index, frame in enumerate(frames):
        if index % every == 0:
            tempo_times.append(round(frame.time, 4))
            tempo_bpm.append(round(frame.tempo, 2))
    return {
        "beat_times": [round(t, 4) for t in analyzer.beat_times],
        "onset_times": [round(t, 4) for t in analyzer.onset_times],
        "tempo_times": tempo_times, "tempo_bpm": tempo_bpm,
        "block": int(block), "rate": rate, "hop": analyzer.hop,
        "lookahead_s": analyzer.lookahead_s, "duration": len(y) / rate,
    }
