"""Onset peaks of an onset strength envelope and their backtracking to the quiet before them
(librosa.onset.onset_detect and onset_backtrack with their defaults), in numpy."""

from __future__ import annotations

import numpy as np


def onset_detect(envelope: np.ndarray, sr: int, hop_length: int) -> np.ndarray:
    """Frames of the onset peaks of `envelope` (one value every hop_length samples at sr Hz), picked
    as librosa picks them on the envelope scaled to [0, 1]: the largest value within 30 ms before,
    at least 0.07 over the mean from 100 ms before to 100 ms after, and 30 ms after the previous peak."""
    env = envelope - np.min(envelope)
    env = env / (np.max(env) + np.finfo(env.dtype).tiny)
    if not env.any() or not np.all(np.isfinite(env)):
        return np.zeros(0, dtype=int)
    pre_max = int(np.ceil(0.03 * sr // hop_length))
    pre_avg = int(np.ceil(0.10 * sr // hop_length))
    wait = int(np.ceil(0.03 * sr // hop_length))
    return peak_pick(env, pre_max, 1, pre_avg, pre_avg + 1, float(np.float32(0.07)), wait)


def peak_pick(x: np.ndarray, pre_max: int, post_max: int, pre_avg: int, post_avg: int, delta: float,
              wait: int) -> np.ndarray:
    """Indices n where x[n] is the largest of x[n - pre_max:n + post_max], at least `delta` over the
    mean of x[n - pre_avg:n + post_avg] (windows clipped to x), and no sooner than `wait` + 1 after
    the previous such index (librosa.util.peak_pick)."""
    n = len(x)
    idx = np.arange(n)
    padded = np.pad(np.asarray(x, float), (pre_max, post_max), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, pre_max + post_max)[:n]
    is_max = x == windows.max(axis=1)
    sums = np.concatenate([[0.0], np.cumsum(np.asarray(x, float))])
    lo, hi = np.maximum(0, idx - pre_avg), np.minimum(idx + post_avg, n)
    mean = (sums[hi] - sums[lo]) / (hi - lo)
    candidates = np.flatnonzero(is_max & (x >= mean + delta))
    peaks, allowed = [], 0
    for c in candidates:
        if c >= allowed:
            peaks.append(c)
            allowed = c + wait + 1
    return np.asarray(peaks, dtype=int)


def onset_backtrack(events: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Each event frame moved back to the latest local minimum of `energy` at or before it (frame 0
    counts as one)."""
    minima = 1 + np.flatnonzero((energy[1:-1] <= energy[:-2]) & (energy[1:-1] < energy[2:]))
    minima = np.unique(np.concatenate([[0], minima]))
    return minima[np.searchsorted(minima, events, side="right") - 1]
