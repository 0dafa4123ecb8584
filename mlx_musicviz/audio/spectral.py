"""The STFT features of a song, block by block: loudness, bands, mel, onset envelopes (whole and
percussive), chroma; equal to a computation on the whole signal."""

from __future__ import annotations

import numpy as np

from .chroma import CHROMA_REACH, _chroma_span, _CQTChroma, _pitch_peaks, _tuning
from .filters import hann, mel
from .grid import HOP, N_FFT
from .hpss import KERNEL, _medians, _percussive_at
from .numba_kernels import kernels

BANDS = {"bass": (20.0, 250.0), "mid": (250.0, 4000.0), "treble": (4000.0, 11025.0)}


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

ONSET_DELAY = 1 + N_FFT // (2 * HOP)  # frames: the onset envelope at frame t is the rise into frame t - 4
REACH = KERNEL // 2 + ONSET_DELAY  # frames read beyond a block's edges: the medians' 15, the onsets' 5
BLOCK_FRAMES = 2560  # STFT frames in an analysis block (29.7 s)
CHROMA_SPAN = 4  # blocks whose chroma is computed at once (fewer, longer CQTs read less beyond their edges)
IN_MEMORY = 600.0  # seconds: a window up to this long is decoded once and held (53 MB)


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
    from numpy.lib.stride_tricks import sliding_window_view

    frames = sliding_window_view(y_seg, N_FFT)[::HOP]
    return np.fft.rfft(frames * _WINDOW, axis=-1)


_WINDOW = hann(N_FFT).astype(np.float32)


def _istft_span(spec: np.ndarray, first: int, a: int, b: int) -> np.ndarray:
    """Samples a..b of the inverse STFT (overlap-add, normalised by the summed squared window) of
    `spec` (frames, bins) whose first row is frame `first`; frame k is centred on sample k * HOP."""
    t = len(spec)
    per = N_FFT // HOP
    frames = (np.fft.irfft(spec, n=N_FFT, axis=-1) * _WINDOW).reshape(t, per, HOP)
    out = np.zeros((t + per - 1, HOP), np.float32)
    norm = np.zeros((t + per - 1, HOP), np.float32)
    square = (_WINDOW ** 2).reshape(per, HOP)
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


ATTACK_FRAME, ATTACK_HOP = 256, 32  # samples: the energy envelope that finds attacks (11.6 ms window, 1.5 ms hop)
SILENCE = 1e-6  # peak sample below which a signal is silent: no beats, onsets, chroma or sections


def _feature_pass(reader: _Reader, n_samples: int, g: dict | None, sr: int,
                  block_frames: int) -> tuple[_Features, dict]:
    """Every per-frame feature of the signal of `n_samples` samples (at least N_FFT: a shorter signal
    is padded with silence), block by block; `g` as in `_block_features`."""
    n_fr = 1 + n_samples // HOP
    median_rows, soft_masks = kernels(n_fr)[:2]
    out = _Features(n_fr, n_samples, max(8, -(-n_fr // 4096)))
    mel_basis = mel(sr, N_FFT)
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
                chroma_of = _CQTChroma(sr, HOP, g["tuning"])
            out.chroma[:, w0:w1] = _chroma_span(harmonic, harmonic_at, w0, w1, n_samples, chroma_of)
            drop = max(0, max(0, (waiting[0][0] if waiting else w1) * HOP - CHROMA_REACH) - harmonic_at)
            harmonic, harmonic_at = harmonic[drop:], harmonic_at + drop
    return out, g
