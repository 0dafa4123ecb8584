"""Keep freed memory in the process on Linux, so that large mlx arrays reuse pages.

mlx's CPU backend takes every buffer from `malloc`, and glibc serves blocks above 32 MiB with a
fresh `mmap` that the kernel faults in one 4 KiB page at a time on first touch and `munmap`s on
free. At 512x512 a decoder activation is 64 MiB: 16,384 page faults, about 45 ms of a 60 ms
multiply measured on a 2-core x86-64 VM, for every such array. With mmap off and trimming off,
freed blocks stay in the heap and the next array of that size reuses pages already mapped
(the same multiply: 16 ms, no faults). The cost: the process keeps its peak heap until it exits.

Set `MLX_MUSICVIZ_MALLOC=0` to leave glibc's defaults alone. Other platforms: nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV_VAR = "MLX_MUSICVIZ_MALLOC"

# mallopt parameters from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from the heap and never give it back.

    Returns True when applied (Linux with glibc, not switched off by `MLX_MUSICVIZ_MALLOC=0`).
    Safe to call more than once; affects allocations made after the call.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get(ENV_VAR, "").strip().lower() in ("0", "off", "false", "no"):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # not glibc (musl has no such tunables)
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
