"""Harmonic-percussive separation's median filters and soft masks (librosa.decompose.hpss, as
librosa computes it): as numba kernels over rows on every core, and the same in numpy."""

from __future__ import annotations

import numpy as np

KERNEL = 31  # HPSS median filter length: frames in time, bins in frequency (librosa's default)
_prange = range  # numba.prange once the kernels are compiled (`numba_kernels`)


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


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Indices i of a row of n values, those outside mapped as scipy.ndimage's mode 'reflect' maps them
    (d c b a | a b c d | d c b a), repeatedly for rows shorter than the reach."""
    i = np.mod(i, 2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def _percussive_at(mag: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> float:
    """The largest percussive magnitude (HPSS, as `_medians` and `_soft_masks` give it) among the bins
    (rows, cols) of `mag` (frames, bins), whose rows are at least KERNEL // 2 frames from a block edge
    that is not the signal's."""
    h = KERNEL // 2
    offsets = np.arange(-h, h + 1)
    t_n, f_n = mag.shape
    best = 0.0
    chunk = 1 << 16  # bins at a time: their windows take 31 values each, twice
    for s in range(0, len(rows), chunk):
        r, c = rows[s:s + chunk], cols[s:s + chunk]
        along_time = mag[_reflect(r[:, None] + offsets, t_n), c[:, None]]
        along_freq = mag[r[:, None], _reflect(c[:, None] + offsets, f_n)]
        harm = np.partition(along_time, h, axis=1)[:, h]
        perc = np.partition(along_freq, h, axis=1)[:, h]
        mask = np.empty(len(r), np.float32)
        _soft_masks_np(harm, perc, np.empty_like(mask), mask)
        best = max(best, float((mag[r, c] * mask).max()))
    return best


def _soft_masks_np(harm: np.ndarray, perc: np.ndarray, mask_harm: np.ndarray, mask_perc: np.ndarray) -> None:
    """`_soft_masks` in numpy (the same float32 operations, so the same values)."""
    z = np.maximum(harm, perc)
    bad = z < np.float32(1.1754944e-38)
    z = np.where(bad, np.float32(1), z)
    a, b = np.square(harm / z), np.square(perc / z)
    with np.errstate(invalid="ignore"):  # 0 / 0 where both are silent, replaced by 0.5
        mask_harm[...] = np.where(bad, np.float32(0.5), a / (a + b))
        mask_perc[...] = np.where(bad, np.float32(0.5), b / (b + a))


def _median_rows_np(x: np.ndarray, k: int, out: np.ndarray, transposed: bool) -> None:
    """`_median_rows` in numpy (a partition of each window, some rows at a time): the same values,
    several times slower, but with no compile or load."""
    from numpy.lib.stride_tricks import sliding_window_view

    rows, n = x.shape
    h = k // 2
    padded = _reflect(np.arange(-h, n + h), n)
    chunk = max(1, (1 << 22) // (n * k))  # rows whose windows (k values each) fill 16 MB
    for s in range(0, rows, chunk):
        med = np.partition(sliding_window_view(x[s:s + chunk][:, padded], k, axis=1), h, axis=-1)[..., h]
        if transposed:
            out[:, s:s + chunk] = med.T
        else:
            out[s:s + chunk] = med
