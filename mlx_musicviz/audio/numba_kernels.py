"""The numba kernels of the analysis, compiled on first use and cached beside their modules."""

from __future__ import annotations

_KERNELS = None


def fast_kernels():
    """(median_rows, soft_masks, beat_local_score, beat_dp), compiled once per process (from the cache)."""
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
