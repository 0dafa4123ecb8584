"""Tempo, beats and how steady the pulse is, from an onset envelope: librosa's estimate and beat
tracker reproduced (its dynamic programme compiled once, cached), and `beat_confidence`."""

from __future__ import annotations

import numpy as np

from .filters import hann
from .grid import HOP, SAMPLE_RATE
from .numba_kernels import kernels

BEAT_PRIOR_BPM = 120.0  # the tempo estimate's log-normal prior: its centre (librosa's default)


def _tempo(onset_env: np.ndarray, sr: int) -> float:
    """librosa.feature.tempo's estimate (BPM): a log-normal prior at 120 BPM on the autocorrelation of
    8 s Hann windows of the onset envelope, normalised and averaged over the song; computed in float32
    with a power-of-two FFT, a block of windows at a time, so a long song's tempogram is never held."""
    from numpy.lib.stride_tricks import sliding_window_view

    win = int(8.0 * sr) // HOP
    n = len(onset_env)
    padded = np.pad(onset_env.astype(np.float32), (win // 2, win // 2), mode="linear_ramp", end_values=[0, 0])
    window = hann(win).astype(np.float32)
    frames = sliding_window_view(padded, win)  # row t: the window centred on frame t
    size = 1 << int(np.ceil(np.log2(2 * win - 1)))
    total = np.zeros(win)
    for s in range(0, n, 4096):
        spec = np.fft.rfft(frames[s:min(s + 4096, n)] * window, n=size, axis=-1)
        ac = np.fft.irfft(spec.real**2 + spec.imag**2, n=size, axis=-1)[:, :win]
        peak = np.abs(ac).max(axis=1, keepdims=True)
        total += (ac / np.where(peak < np.finfo(np.float32).tiny, np.float32(1), peak)).sum(axis=0)
    mean = total / n
    bpms = np.full(win, np.inf)  # the tempo of each lag (librosa.tempo_frequencies)
    bpms[1:] = 60.0 * sr / (HOP * np.arange(1.0, win))
    with np.errstate(divide="ignore"):
        logprior = -0.5 * ((np.log2(bpms) - np.log2(BEAT_PRIOR_BPM)) / 1.0) ** 2
    logprior[: int(np.argmax(bpms < 320.0))] = -np.inf
    best = int(np.argmax(np.log1p(1e6 * mean) + logprior))
    return float(bpms[best])


def _beats(onset_env: np.ndarray, whole_env: np.ndarray, sr: int, seconds: float) -> tuple[float, np.ndarray, float]:
    """(tempo in BPM, beat frames, beat confidence) from the percussive onset envelope; no beat grid
    (0 BPM, no beats) where the pulse is too weak for a steady beat (see `beat_confidence`).

    The confidence is the lesser of the percussive envelope's and the whole sound's (`whole_env`): the
    percussive one is in dB below its own loudest bin, which in music with no percussion (a drone, held
    chords) magnifies the slow beating of close partials into what looks like a pulse."""
    if not onset_env.any():
        return 0.0, np.zeros(0, dtype=int), 0.0
    confidence = min(beat_confidence(onset_env, sr), beat_confidence(whole_env, sr))
    if confidence < (STEADY_BEAT if seconds >= PULSE_EVIDENCE else NO_PULSE):
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
    _, _, local_score, dp = kernels(len(onset_env))
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


def _beat_local_score_np(onsets: np.ndarray, period: float, out: np.ndarray) -> None:
    """`_beat_local_score` in numpy: the same terms added in the same order, a window tap at a time."""
    window = np.exp(-0.5 * (np.arange(-period, period + 1) * 32.0 / period) ** 2)
    k_n, n = len(window), len(onsets)
    out[:] = 0.0
    for k in range(k_n):  # out[i] += window[k] * onsets[i + k_n // 2 - k] where that index is in range
        i0, i1 = max(0, k - k_n // 2 + 1), min(n, n + k - k_n // 2)
        if i1 > i0:
            out[i0:i1] += window[k] * onsets[i0 + k_n // 2 - k:i1 + k_n // 2 - k]


def _beat_dp_np(score: np.ndarray, period: float, tightness: float, backlink: np.ndarray,
                cumulative: np.ndarray) -> None:
    """`_beat_dp` in numpy: a beat's predecessor is at least round(period / 2) frames back, so that many
    frames are scored at once; ties go to the nearest predecessor, as the loop's strict > gives them."""
    lags = np.arange(int(np.round(period / 2)), int(2 * period) + 1)
    penalty = tightness * (np.log(lags) - np.log(period)) ** 2
    location = np.full(len(score), -1, dtype=np.int64)
    step = max(1, int(lags[0]))
    for s in range(0, len(score), step):
        i = np.arange(s, min(s + step, len(score)))
        loc = i[:, None] - lags[None, :]
        values = np.where(loc >= 0, cumulative[np.maximum(loc, 0)] - penalty, -np.inf)
        best = np.argmax(values, axis=1)
        found = loc[:, 0] >= 0
        location[i] = np.where(found, loc[np.arange(len(i)), best], -1)
        cumulative[i] = np.where(found, score[i] + values[np.arange(len(i)), best], score[i])
    started = score >= 0.01 * score.max()  # no predecessor before the first beat loud enough
    first = int(np.argmax(started)) if started.any() else len(score)
    backlink[:first] = -1
    backlink[first:] = location[first:]


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
PULSE_EVIDENCE = 16.0  # seconds: below this (two windows) a short clip of music can read as low as noise ...
NO_PULSE = 0.1  # ... so a shorter signal loses its beats only below this (tones, sweeps, held chords: 0; noise 0.14)


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
    from numpy.lib.stride_tricks import sliding_window_view

    rate = sr / hop_length
    env = np.asarray(onset_envelope, np.float64)
    rise = env - _moving_average(env, int(round(0.5 * rate)) | 1)
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
        spec = np.fft.rfft(frames[s:s + 1024] * window, n=size, axis=-1)
        ac = np.fft.irfft(spec.real**2 + spec.imag**2, n=size, axis=-1)
        repeat += float(ac[:, lo:hi].max(axis=1).sum())
        energy += float(ac[:, 0].sum())
    return float(np.clip(repeat / energy, 0.0, 1.0)) if energy > 0 else 0.0


def _moving_average(x: np.ndarray, size: int) -> np.ndarray:
    """Mean of each odd `size` window centred on each value, the edge values repeated beyond the ends
    (scipy.ndimage.uniform_filter1d(x, size, mode="nearest"))."""
    if len(x) == 0:
        return x.copy()
    sums = np.concatenate([[0.0], np.cumsum(np.pad(x, size // 2, mode="edge"))])
    return (sums[size:] - sums[:-size]) / size
