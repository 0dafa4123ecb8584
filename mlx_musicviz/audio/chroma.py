"""Tuning and CQT chroma (librosa.estimate_tuning and chroma_cqt), over spans of the harmonic signal."""

from __future__ import annotations

import numpy as np

from .filters import (
    C1,
    cq_to_chroma,
    cqt_frequencies,
    normalize_peak,
    relative_bandwidth,
    resample,
    wavelet_basis_fft,
    wavelet_lengths,
)
from .grid import HOP, N_FFT


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
    residual = np.mod(CQT_BINS_PER_OCTAVE * np.log2(pitch / (440.0 / 16)), 1.0)
    residual[residual >= 0.5] -= 1.0
    return residual, mags


CHROMA_REACH = 172 * HOP  # samples of harmonic signal beyond a span's edges its CQT reads (2.0 s)
CQT_BINS_PER_OCTAVE = 36  # librosa.feature.chroma_cqt's default


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
        bpo, n_oct = CQT_BINS_PER_OCTAVE, 7
        self.n_bins = bpo * n_oct
        freqs = cqt_frequencies(self.n_bins, C1 * 2.0 ** (tuning / bpo), bpo)
        alpha = relative_bandwidth(freqs)
        _, cutoff = wavelet_lengths(freqs, sr, alpha)
        # octaves that need no more than half the rate are computed at it (librosa's early downsampling)
        below_nyquist = max(0, int(np.ceil(np.log2(sr / 2.0 / cutoff)) - 1) - 1)
        twos = (hop & -hop).bit_length() - 1  # factors of two in the hop
        self.factor = 2 ** min(below_nyquist, max(0, twos - n_oct + 1))
        self.sr, self.hop = sr / self.factor, hop // self.factor
        lengths, _ = wavelet_lengths(freqs, self.sr, alpha)
        self.scale = (1.0 / np.sqrt(lengths)).astype(np.float32)[:, None]
        self.octaves = []  # from the top octave down: (filters (n_fft // 2 + 1, bins), n_fft, hop)
        my_sr, my_hop = self.sr, self.hop
        for i in range(n_oct):
            sl = slice(-bpo, None) if i == 0 else slice(-bpo * (i + 1), -bpo * i)
            basis, n_fft = wavelet_basis_fft(freqs[sl], my_sr, alpha[sl])
            basis = basis * np.sqrt(self.sr / my_sr)
            self.octaves.append((np.ascontiguousarray(basis.T.astype(np.complex64)), n_fft, my_hop))
            if my_hop % 2 == 0:
                my_hop //= 2
                my_sr /= 2.0
        self.to_chroma = cq_to_chroma(self.n_bins, bpo)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        from numpy.lib.stride_tricks import sliding_window_view

        if self.factor > 1:
            y = resample(y, self.factor, 1, scale=True)
        responses = []
        for basis, n_fft, hop in self.octaves:
            padded = np.pad(y, n_fft // 2)
            frames = sliding_window_view(padded, n_fft)[::hop]
            responses.append((np.fft.rfft(frames, axis=-1) @ basis).T)
            if hop % 2 == 0:
                y = resample(y, 2, 1, scale=True)
        columns = min(r.shape[1] for r in responses)
        cqt = np.concatenate([r[:, :columns] for r in reversed(responses)])  # from C1 up
        chroma = self.to_chroma @ (np.abs(cqt) * self.scale)
        chroma[chroma < 0] = 0.0
        return normalize_peak(chroma, axis=-2)
