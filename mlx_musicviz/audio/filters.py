"""librosa's windows, filter banks and conversions, in numpy alone: the analysis imports neither librosa nor
scipy (whose imports and numba compiles cost a fresh process seconds). Each equals librosa's to float
rounding (tests/test_filters.py compares them)."""

from __future__ import annotations

import numpy as np

HANN_BANDWIDTH = 1.50018310546875  # the Hann window's equivalent noise bandwidth, in bins (librosa's table)
C1 = 440.0 * 2.0 ** ((24 - 69) / 12.0)  # Hz: note C1, where the CQT starts (librosa.note_to_hz("C1"))


def hann(n: int) -> np.ndarray:
    """Periodic Hann window of n samples (float64), as scipy.signal.get_window("hann", n) computes it."""
    if n <= 1:
        return np.ones(n)
    return (0.5 + 0.5 * np.cos(np.linspace(-np.pi, np.pi, n + 1)))[:-1]


def frames_to_time(frames, sr: float, hop_length: int) -> np.ndarray:
    """Seconds of STFT frames (each hop_length samples at sr Hz)."""
    return np.asanyarray(frames) * hop_length / float(sr)


def normalize_peak(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """x over its largest magnitude along `axis`, left as it is where that is below float tiny
    (librosa.util.normalize(x, norm=np.inf, axis=axis))."""
    length = np.max(np.abs(x).astype(float), axis=axis, keepdims=True)
    length[length < np.finfo(x.dtype).tiny] = 1.0
    out = np.empty_like(x)
    out[:] = x / length
    return out


def power_to_db(power: np.ndarray, top_db: float = 80.0) -> np.ndarray:
    """10 log10(power) (ref 1, floor 1e-10), no lower than top_db under its largest value
    (librosa.power_to_db(power, ref=1.0))."""
    db = 10.0 * np.log10(np.maximum(1e-10, power))
    return np.maximum(db, db.max() - top_db)


_MEL_HZ = 200.0 / 3  # Slaney's mel scale: linear to 1 kHz (3 mels / 200 Hz), logarithmic above
_LOG_MEL = 1000.0 / _MEL_HZ  # the mel of 1 kHz
_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asanyarray(hz, dtype=float)
    mels = hz / _MEL_HZ
    log = hz >= 1000.0
    mels[log] = _LOG_MEL + np.log(hz[log] / 1000.0) / _LOG_STEP
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = _MEL_HZ * mels
    log = mels >= _LOG_MEL
    hz[log] = 1000.0 * np.exp(_LOG_STEP * (mels[log] - _LOG_MEL))
    return hz


def mel(sr: float, n_fft: int, n_mels: int = 128) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 triangular mel filters from 0 Hz to sr / 2, Slaney's scale and
    area normalisation (librosa.filters.mel's defaults)."""
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([sr / 2.0]))[0], n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    weights = np.zeros((n_mels, len(fft_freqs)), np.float32)
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / widths[i], ramps[i + 2] / widths[i + 1]))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights


def chroma(sr: float, n_fft: int, n_chroma: int = 12) -> np.ndarray:
    """(n_chroma, n_fft // 2 + 1) float32 chroma filters of an STFT (librosa.filters.chroma's defaults:
    A440 tuning, Gaussian bumps one bin wide, unit L2 per bin, weighted by a Gaussian over octaves
    centred on octave 5, two octaves wide; row 0 is C)."""
    freqs = np.linspace(0, sr, n_fft, endpoint=False)[1:]
    bins = n_chroma * np.log2(freqs / (440.0 / 16))
    bins = np.concatenate([[bins[0] - 1.5 * n_chroma], bins])
    widths = np.concatenate([np.maximum(bins[1:] - bins[:-1], 1.0), [1]])
    half = np.round(float(n_chroma) / 2)
    d = np.remainder(np.subtract.outer(bins, np.arange(0, n_chroma, dtype="d")).T + half + 10 * n_chroma,
                     n_chroma) - half
    w = np.exp(-0.5 * (2 * d / np.tile(widths, (n_chroma, 1))) ** 2)
    norms = np.sum(np.abs(w) ** 2, axis=0, keepdims=True) ** 0.5
    norms[norms < np.finfo(w.dtype).tiny] = 1.0
    w = w / norms
    w *= np.tile(np.exp(-0.5 * ((bins / n_chroma - 5.0) / 2.0) ** 2), (n_chroma, 1))
    w = np.roll(w, -3 * (n_chroma // 12), axis=0)
    return np.ascontiguousarray(w[:, :int(1 + n_fft / 2)], dtype=np.float32)


# -- the constant-Q transform's filters -------------------------------------------------------------


def cqt_frequencies(n_bins: int, fmin: float, bins_per_octave: int) -> np.ndarray:
    """Centre frequencies (Hz) of n_bins equal-tempered bins from fmin (librosa.interval_frequencies)."""
    ratios = 2.0 ** (np.arange(0, bins_per_octave, dtype=float) / bins_per_octave)
    octaves = 2.0 ** np.arange(np.ceil(n_bins / bins_per_octave))
    return np.sort(np.multiply.outer(octaves, ratios).ravel()[:n_bins]) * fmin


def relative_bandwidth(freqs: np.ndarray) -> np.ndarray:
    """Each bin's bandwidth over its frequency, from the spacing of its neighbours (librosa's alpha)."""
    per_octave = np.empty_like(freqs)
    logf = np.log2(freqs)
    per_octave[0] = 1 / (logf[1] - logf[0])
    per_octave[-1] = 1 / (logf[-1] - logf[-2])
    per_octave[1:-1] = 2 / (logf[2:] - logf[:-2])
    return (2.0 ** (2 / per_octave) - 1) / (2.0 ** (2 / per_octave) + 1)


def wavelet_lengths(freqs: np.ndarray, sr: float, alpha: np.ndarray) -> tuple[np.ndarray, float]:
    """(samples in each Hann wavelet, the highest frequency any passes) at Q = 1 / alpha
    (librosa.filters.wavelet_lengths with gamma 0 and filter_scale 1)."""
    q = 1.0 / alpha
    return q * sr / freqs, float(max(freqs * (1 + 0.5 * HANN_BANDWIDTH / q)))


def wavelet_basis_fft(freqs: np.ndarray, sr: float, alpha: np.ndarray, sparsity: float = 0.01) -> tuple[np.ndarray, int]:
    """(bins, n_fft // 2 + 1) complex64 spectra of the Hann-windowed complex wavelets of `freqs`, each
    scaled by its length over n_fft, with each row's smallest values (`sparsity` of its L1 mass) zeroed,
    and n_fft, the power of two that holds the longest (librosa.core.constantq's filter bank)."""
    lengths, _ = wavelet_lengths(freqs, sr, alpha)
    n_fft = int(2.0 ** np.ceil(np.log2(max(lengths))))
    basis = np.zeros((len(freqs), n_fft), np.complex64)
    for row, (length, freq) in enumerate(zip(lengths, freqs)):
        angles = np.arange(-length // 2, length // 2, dtype=float) * 2 * np.pi * freq / sr
        sig = (np.cos(angles) + 1j * np.sin(angles)) * hann(len(angles))
        total = np.sum(np.abs(sig))
        sig = sig / (total if total >= np.finfo(float).tiny else 1.0)
        left = (n_fft - len(sig)) // 2
        basis[row, left:left + len(sig)] = sig
    basis *= lengths[:, None] / float(n_fft)
    spectra = np.fft.fft(basis, n=n_fft, axis=1)[:, :n_fft // 2 + 1].astype(np.complex64)
    return _sparsify_rows(spectra, sparsity), n_fft


def _sparsify_rows(x: np.ndarray, quantile: float) -> np.ndarray:
    """x with each row's smallest magnitudes, together under `quantile` of its L1 norm, set to zero
    (librosa.util.sparsify_rows, dense)."""
    mags = np.abs(x)
    ordered = np.sort(mags, axis=1)
    cumulative = np.cumsum(ordered / np.sum(mags, axis=1, keepdims=True), axis=1)
    cut = np.argmin(cumulative < quantile, axis=1)
    keep = mags >= ordered[np.arange(len(x)), cut][:, None]
    return np.where(keep, x, 0).astype(x.dtype)


def cq_to_chroma(n_bins: int, bins_per_octave: int) -> np.ndarray:
    """(12, n_bins) float32 map of CQT bins from C1 to pitch classes, each class the bins centred on
    it (librosa.filters.cq_to_chroma with fmin C1)."""
    merge = bins_per_octave // 12
    fold = np.roll(np.repeat(np.eye(12), merge, axis=1), -(merge // 2), axis=1)
    return np.tile(fold, int(np.ceil(n_bins / bins_per_octave)))[:, :n_bins].astype(np.float32)


def dct_ortho(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) orthonormal DCT-II matrix: its first n_out rows (scipy.fft.dct(x, norm="ortho"))."""
    k = np.arange(n_out)[:, None]
    m = np.cos(np.pi * k * (2 * np.arange(n_in)[None, :] + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    m[0] /= np.sqrt(2.0)
    return m


def resample(y: np.ndarray, orig_sr: float, target_sr: float, scale: bool = False) -> np.ndarray:
    """y at target_sr, soxr's high quality, ceil(len * ratio) samples; scale=True divides by
    sqrt(ratio) (librosa.resample(..., res_type="soxr_hq"))."""
    import soxr

    if orig_sr == target_sr:
        return y
    ratio = float(target_sr) / orig_sr
    n = int(np.ceil(len(y) * ratio))
    out = soxr.resample(y, orig_sr, target_sr, quality="soxr_hq")
    out = out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))
    if scale:
        out = out / np.sqrt(ratio)
    return np.asarray(out, dtype=y.dtype)
