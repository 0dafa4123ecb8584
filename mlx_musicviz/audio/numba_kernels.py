"""The analysis kernels (HPSS median filters and soft masks, the beat tracker's loops): numba's, compiled
on first use and cached beside their modules, and the same in numpy for a process's first short clip."""

from __future__ import annotations

NUMPY_FRAMES = 2560  # STFT frames (29.7 s, one analysis block) up to which numpy's kernels are used ...
_KERNELS = None  # ... unless numba's are loaded already ...
_FIRST = True  # ... or an analysis has finished (`analysed`): the process analyses more, so numba pays


def kernels(frames: int):
    """(median_rows, soft_masks, beat_local_score, beat_dp) for a signal of `frames` STFT frames. Both
    sets give the same values; numpy's start at once, numba's cost a fresh process its import and a
    first load of about a second but run several times faster: numpy's serve the first analysis of a
    short clip (a short render or preview starts at once), numba's a song or the analyses after it."""
    if _KERNELS is None and _FIRST and frames <= NUMPY_FRAMES:
        from . import beats, hpss

        return hpss._median_rows_np, hpss._soft_masks_np, beats._beat_local_score_np, beats._beat_dp_np
    return fast_kernels()


def analysed() -> None:
    """Called when an analysis finishes: later ones take numba's kernels."""
    global _FIRST
    _FIRST = False


def fast_kernels():
    """numba's kernels, compiled once per process (from the cache)."""
    global _KERNELS
    if _KERNELS is None:
        import numba

        from . import beats, hpss

        hpss._prange = numba.prange  # the loops over rows of the HPSS kernels run on every core
        jit = numba.njit(cache=True, nogil=True)
        parallel = numba.njit(cache=True, nogil=True, parallel=True)
        _KERNELS = (parallel(hpss._median_rows), parallel(hpss._soft_masks), jit(beats._beat_local_score),
                    jit(beats._beat_dp))
    return _KERNELS
