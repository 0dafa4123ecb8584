"""The analysis kernels (HPSS median filters and soft masks, the beat tracker's loops): numba's, compiled
on first use and cached beside their modules, and the same in numpy for a short clip."""

from __future__ import annotations

NUMPY_FRAMES = 2560  # STFT frames (29.7 s, one analysis block) up to which numpy's kernels are used ...
_KERNELS = None  # ... unless numba's are loaded already


def kernels(frames: int):
    """(median_rows, soft_masks, beat_local_score, beat_dp) for a signal of `frames` STFT frames. Both
    sets give the same values; numpy's start at once, numba's cost a fresh process its import and a
    first load of about a second but run several times faster, so they pay from a song's length on."""
    if _KERNELS is None and frames <= NUMPY_FRAMES:
        from . import beats, hpss

        return hpss._median_rows_np, hpss._soft_masks_np, beats._beat_local_score_np, beats._beat_dp_np
    return fast_kernels()


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
