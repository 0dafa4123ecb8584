"""A song's sections: Ward clustering of its MFCC sequence into contiguous parts (librosa.segment.agglomerative,
which uses scikit-learn's AgglomerativeClustering on a chain of neighbours), in numpy and a heap."""

from __future__ import annotations

import heapq

import numpy as np

from .filters import dct_ortho, normalize_peak, power_to_db


def mfcc_sequence(mel_power: np.ndarray, n_mfcc: int = 13) -> np.ndarray:
    """(n_mfcc, steps) MFCCs of a (mels, steps) mel power sequence, each coefficient scaled to a peak
    magnitude of 1 over the steps (librosa.feature.mfcc of its dB, then librosa.util.normalize)."""
    db = power_to_db(mel_power)
    return normalize_peak(dct_ortho(len(db), n_mfcc) @ db, axis=1)


def agglomerative(data: np.ndarray, k: int) -> np.ndarray:
    """Start indices (the first 0) of the k contiguous segments of the columns of `data` (features,
    steps) that Ward's criterion finds when neighbours alone may merge: again and again the two
    adjacent segments whose merge adds least to the within-segment variance (n_a n_b / (n_a + n_b)
    times the squared distance of their means) become one. Ties go as scikit-learn's heap breaks them: to
    the pair whose newer member was made first, then whose older member was (leaves are made first,
    in order)."""
    x = np.asarray(data, float).T
    n = len(x)
    k = max(1, min(k, n))
    count = np.ones(n)
    total = x.copy()
    left, right = np.arange(-1, n - 1), np.arange(1, n + 1)  # neighbouring segments, by their first step
    right[-1] = -1
    node = np.arange(n)  # each segment's node number in scikit-learn's tree: leaves 0..n-1, merges n, n + 1, ...
    heap = [(_ward(count, total, i + 1, i), i + 1, i, i, i + 1) for i in range(n - 1)]
    heapq.heapify(heap)
    segments, made = n, n
    while segments > k:
        _, newer, older, a, b = heapq.heappop(heap)  # a, b: the pair's segments, by their first step
        if right[a] != b or {node[a], node[b]} != {newer, older}:
            continue  # a member has grown since
        count[a] += count[b]
        total[a] += total[b]
        right[a] = right[b]
        if right[b] >= 0:
            left[right[b]] = a
        right[b] = -1
        node[a], made, segments = made, made + 1, segments - 1
        for other in (left[a], right[a]):
            if other >= 0:
                heapq.heappush(heap, (_ward(count, total, a, other), node[a], node[other], min(a, other), max(a, other)))
    starts = [0]
    while right[starts[-1]] >= 0:
        starts.append(int(right[starts[-1]]))
    return np.asarray(starts)


def _ward(count: np.ndarray, total: np.ndarray, a: int, b: int) -> float:
    """The merge cost of segments a and b, summed in scikit-learn's order (so equal costs tie alike)."""
    squares = 0.0
    for d in (total[a] / count[a] - total[b] / count[b]).tolist():
        squares += d * d
    return squares * (count[a] * count[b] / (count[a] + count[b]))
