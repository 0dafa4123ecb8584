"""Put an optimized BLAS in front of the reference BLAS that the Linux `mlx[cpu]` wheel links.

The wheel's `libmlx.so` takes `cblas_sgemm` from a bundled reference BLAS (about 5 GFLOP/s).
The dynamic linker resolves `libmlx.so`'s symbols through the global scope first, so a
library loaded with `RTLD_GLOBAL` *before* mlx is imported wins every BLAS call. This module
must therefore run before the first `import mlx`; `mlx_musicviz/__init__.py` does that.

Set `MLX_MUSICVIZ_BLAS=0` to turn it off, or to a path to choose the library.
On macOS mlx uses Accelerate and nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV_VAR = "MLX_MUSICVIZ_BLAS"

# Debian/Ubuntu (libopenblas0-pthread / -openmp), Fedora, conda-style layouts.
CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

_loaded: str | None = None


def preload_blas() -> str | None:
    """Load an optimized BLAS into the global symbol scope; return its path, or None.

    Has no effect (returns None) on non-Linux systems, when the environment variable
    `MLX_MUSICVIZ_BLAS` is `0`, or when no candidate library exists. Warns if mlx was
    already imported, because the symbols it bound then cannot be rebound.
    """
    global _loaded
    if _loaded is not None or not sys.platform.startswith("linux"):
        return _loaded
    choice = os.environ.get(ENV_VAR, "").strip()
    if choice.lower() in ("0", "off", "false", "no"):
        return None
    paths = (choice,) if choice else CANDIDATES
    for path in paths:
        if not os.path.exists(path):
            continue
        if "mlx.core" in sys.modules:
            import warnings

            warnings.warn(
                "mlx was imported before mlx_musicviz; the optimized BLAS cannot take over. "
                "Import mlx_musicviz first.",
                stacklevel=3,
            )
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        _loaded = path
        return path
    return None


def blas_provider(symbol: str = "cblas_sgemm") -> str | None:
    """Path of the shared library that provides `symbol` to the process's global lookup scope.

    This is the definition the dynamic linker binds mlx's BLAS calls to. Linux only.
    """
    if not sys.platform.startswith("linux"):
        return None

    class DlInfo(ctypes.Structure):
        _fields_ = [
            ("dli_fname", ctypes.c_char_p),
            ("dli_fbase", ctypes.c_void_p),
            ("dli_sname", ctypes.c_char_p),
            ("dli_saddr", ctypes.c_void_p),
        ]

    libdl = ctypes.CDLL(None)
    libdl.dlsym.restype = ctypes.c_void_p
    libdl.dlsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    address = libdl.dlsym(None, symbol.encode())  # RTLD_DEFAULT: what mlx binds to first
    if not address:
        # Nothing global: mlx falls back to its own dependencies (the bundled BLAS).
        import mlx.core

        libmlx = os.path.join(os.path.dirname(mlx.core.__file__), "lib", "libmlx.so")
        if not os.path.exists(libmlx):
            return None
        handle = ctypes.CDLL(libmlx, mode=os.RTLD_NOLOAD | ctypes.RTLD_LOCAL)._handle
        address = libdl.dlsym(ctypes.c_void_p(handle), symbol.encode())
        if not address:
            return None
    info = DlInfo()
    libdl.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
    if not libdl.dladdr(ctypes.c_void_p(address), ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.realpath(info.dli_fname.decode())
