"""CPU kernels in C++ for what mlx's CPU backend composes slowly: a fused Winograd 3x3 convolution,
a fused multi-head attention, GroupNorm (+ SiLU) and LayerNorm in one pass each, and GEGLU's activation.

Each kernel (`winograd_conv.h`, `attention.h`, `group_norm.h`, `layer_norm.h`, `geglu.h`, over `simd.h`'s vectors, matrix product and threads) is an mlx primitive (`extension.cpp`), so it runs inside mlx's lazy
graph on its CPU stream like any other op. It is compiled on first use against the mlx that is
installed (its headers and `libmlx`), with nanobind in mlx's own domain, and cached by everything
that could change the binary: the sources, the versions of mlx, nanobind and Python, the compiler,
and this CPU's features (it is built with -march=native). A build takes ~10-20 s, once per machine.

Linux only (on macOS mlx runs the models on the GPU), and used only where the CPU has AVX-512: the
kernels hold blocks of 16 floats in registers, which AVX-512's 32 registers keep and AVX2's 16 spill,
so that on an AVX2 CPU mlx's own paths are the faster ones (the tiny VAE's decode took about five
times as long through the kernels on one). Set `MLX_MUSICVIZ_KERNELS=0` to use mlx's own paths
anyway, `=1` to use the kernels on any CPU that builds them; `MLX_MUSICVIZ_CACHE` moves the cache (default `$XDG_CACHE_HOME/mlx-musicviz`, or
`~/.cache/mlx-musicviz`). If the kernels cannot be built or fail their self-check (no C++ compiler,
no nanobind, an mlx built with another nanobind ABI), `available()` is False, `unavailable_reason()`
says why, and the models use their pure-mlx paths: slower, same results within float32 rounding.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

ENV_VAR = "MLX_MUSICVIZ_KERNELS"
CACHE_VAR = "MLX_MUSICVIZ_CACHE"
MODULE = "_musicviz_kernels"
SOURCES = ("extension.cpp", "simd.h", "winograd_conv.h", "attention.h", "group_norm.h", "layer_norm.h", "geglu.h", "vector_math.h")
FLAGS = ("-O3", "-march=native", "-std=c++20", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread",
         "-DNDEBUG", "-DNB_DOMAIN=mlx")  # mlx.core's nanobind domain: its array type is shared within it

_lock = threading.Lock()
_module = None
_reason: str | None = None


def _disabled() -> bool:
    return os.environ.get(ENV_VAR, "").strip().lower() in ("0", "off", "false", "no")


def _forced() -> bool:
    return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "on", "true", "yes")


def slower_here() -> str | None:
    """Why mlx's own paths are faster than the kernels on this CPU (None where the kernels are faster)."""
    if platform.machine().lower() in ("x86_64", "amd64") and "avx512f" not in _cpu_features().split():
        return "this CPU has no AVX-512: mlx's own paths are faster here (MLX_MUSICVIZ_KERNELS=1 uses the kernels)"
    return None


def cache_dir() -> Path:
    """Where built kernels are kept."""
    root = os.environ.get(CACHE_VAR) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlx-musicviz")
    return Path(root) / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_features() -> str:
    """This CPU's feature flags (what -march=native compiles for)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build_key(compiler: str, mlx_version: str, nanobind_version: str) -> str:
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((here / name).read_bytes())
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    for part in (mlx_version, nanobind_version, sys.version, sysconfig.get_config_var("EXT_SUFFIX") or "",
                 version, " ".join(FLAGS), _cpu_features()):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def _build(target: Path, compiler: str) -> None:
    """Compile the extension into `target` (written under a temporary name, then renamed)."""
    import mlx.core as mx
    import nanobind

    mlx_root = Path(mx.__file__).parent
    here = Path(__file__).parent
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        partial = Path(work) / target.name
        command = [compiler, *FLAGS,
                   f"-I{nanobind.include_dir()}", f"-I{Path(nanobind.source_dir()).parent / 'ext' / 'robin_map' / 'include'}",
                   f"-I{sysconfig.get_paths()['include']}", f"-I{mlx_root / 'include'}", f"-I{here}",
                   str(here / "extension.cpp"), str(Path(nanobind.source_dir()) / "nb_combined.cpp"),
                   f"-L{mlx_root / 'lib'}", "-lmlx", f"-Wl,-rpath,{mlx_root / 'lib'}", "-o", str(partial)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"the C++ build failed ({compiler}): {last}")
        os.replace(partial, target)


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _self_check(module) -> None:
    """The built kernel against mlx's own convolution on a small input, every path it has."""
    import mlx.core as mx
    import mlx.nn as nn

    key = mx.random.key(0)
    x = mx.random.normal((2, 6, 4, 16), key=key)
    weight = mx.random.normal((64, 3, 3, 16), key=mx.random.split(key)[0])
    bias = mx.arange(64, dtype=mx.float32) / 64
    for upsample in (False, True):
        source = mx.repeat(mx.repeat(x, 2, axis=1), 2, axis=2) if upsample else x
        expected = mx.conv2d(source, weight, padding=1, stream=mx.cpu) + bias
        residual = mx.ones_like(expected)
        got = module.conv3x3(x, weight, bias, residual, relu=True, upsample=upsample)
        error = mx.abs(got - mx.maximum(expected + residual, 0)).max().item()
        if not error < 1e-3:
            raise RuntimeError(f"the built kernel disagrees with mlx's convolution (max error {error:.3g})")
    q, k, v = (3 * mx.random.normal((2, tokens, 128), key=part) for tokens, part in zip((50, 64, 64), mx.random.split(key, 3)))
    heads = [t.reshape(2, -1, 2, 64).transpose(0, 2, 1, 3) for t in (q, k, v)]
    expected = mx.softmax((heads[0] @ heads[1].swapaxes(-1, -2)) * 0.125, axis=-1) @ heads[2]
    error = mx.abs(module.attention(q, k, v, 2, 0.125) - expected.transpose(0, 2, 1, 3).reshape(2, 50, 128)).max().item()
    if not error < 1e-4:
        raise RuntimeError(f"the built attention kernel disagrees with mlx's (max error {error:.3g})")
    x = 2 + 3 * mx.random.normal((2, 70, 32), key=key)
    groups = x.reshape(2, 70, 4, 8)
    mean, var = groups.mean(axis=(1, 3), keepdims=True), groups.var(axis=(1, 3), keepdims=True)
    expected = ((groups - mean) * mx.rsqrt(var + 1e-5)).reshape(x.shape) * bias[:32] + 1
    expected = expected * mx.sigmoid(expected)
    error = mx.abs(module.group_norm(x, 4, 1e-5, bias[:32], mx.ones(32), silu=True) - expected).max().item()
    if not error < 1e-4:
        raise RuntimeError(f"the built GroupNorm kernel disagrees with mlx's (max error {error:.3g})")
    h, gate = x[..., :16], x[..., 16:]
    expected = h * nn.gelu(gate)
    error = mx.abs(module.geglu(x) - expected).max().item()
    if not error < 1e-4:
        raise RuntimeError(f"the built GEGLU kernel disagrees with mlx's (max error {error:.3g})")
    expected = (x - x.mean(axis=-1, keepdims=True)) * mx.rsqrt(x.var(axis=-1, keepdims=True) + 1e-5) * bias[:32] + 1
    error = mx.abs(module.layer_norm(x, 1e-5, bias[:32], mx.ones(32)) - expected).max().item()
    if not error < 1e-4:
        raise RuntimeError(f"the built LayerNorm kernel disagrees with mlx's (max error {error:.3g})")


def _kernels():
    global _module, _reason
    with _lock:
        if _module is not None or _reason is not None:
            return _module
        try:
            if not sys.platform.startswith("linux"):
                raise RuntimeError("built on Linux only (on macOS mlx runs the models on the GPU)")
            if _disabled():
                raise RuntimeError(f"{ENV_VAR}=0")
            compiler = _compiler()
            if compiler is None:
                raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
            try:
                import nanobind
            except ImportError:
                raise RuntimeError("nanobind is not installed (pip install nanobind)") from None
            import mlx.core as mx

            key = _build_key(compiler, mx.__version__, nanobind.__version__)
            path = cache_dir() / key / f"{MODULE}{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"
            if not path.exists():
                _build(path, compiler)
            module = _load(path)
            _self_check(module)
            _module = module
        except Exception as error:  # any failure leaves mlx's own paths in use, with the reason kept
            _reason = f"{type(error).__name__}: {error}" if not isinstance(error, RuntimeError) else str(error)
        return _module


def built() -> bool:
    """Whether the C++ kernels are built, checked and loaded (building them on the first call)."""
    return _kernels() is not None


def available() -> bool:
    """Whether the models use the C++ kernels: built (see `built`) and faster than mlx's own paths on
    this CPU (`slower_here`), or asked for with MLX_MUSICVIZ_KERNELS=1; never inside `differentiable()`
    (the kernels have no gradients)."""
    from ..device import differentiating

    return not differentiating() and built() and (_forced() or slower_here() is None)


def unavailable_reason() -> str | None:
    """Why `available()` is False (None while it is True or not yet asked)."""
    if _reason is None and _module is not None and not _forced():
        return slower_here()
    return _reason


def conv3x3(x, weight, bias=None, residual=None, relu: bool = False, upsample: bool = False):
    """relu?(conv(upsample?(x), weight) + bias + residual): a 3x3, stride-1, padding-1 convolution of
    float32 NHWC `x` (N, H, W, C) with `weight` (O, 3, 3, C), on mlx's CPU stream.

    `upsample`: x is first repeated 2x along H and W (nearest), without that map being made.
    `residual`: (N, H', W', O), the output's shape, added before the ReLU.
    Needs even output sides, C a multiple of 16 and O of 64 (`supports`). Call only when `available()`.
    """
    return _kernels().conv3x3(x, weight, bias, residual, relu, upsample)


def attention(q, k, v, heads: int, scale: float):
    """softmax(q_h k_h^T * scale) v_h for each of `heads` heads, over float32 (B, N, heads * d) `q` and
    (B, M, heads * d) `k`, `v` (the projections' layout, head h in columns h * d to (h + 1) * d);
    returns (B, N, heads * d). No mask. Needs d a multiple of 64 (`attention_supports`); any M.
    """
    return _kernels().attention(q, k, v, heads, scale)


def attention_supports(keys: int, head_size: int) -> bool:
    """Whether `attention` takes `keys` key tokens and heads of `head_size` channels."""
    return keys > 0 and head_size > 0 and head_size % 64 == 0


def group_norm(x, groups: int, eps: float, weight=None, bias=None, silu: bool = False):
    """silu?(GroupNorm(x) * weight + bias) over float32 `x` (N, ..., C): statistics per image and
    group of C / groups consecutive channels (PyTorch's grouping), over all pixels. `weight`, `bias`:
    (C,) or None. Needs C a multiple of 16 and of `groups` (`group_norm_supports`). Call only when `available()`.
    """
    return _kernels().group_norm(x, groups, eps, weight, bias, silu)


def layer_norm(x, eps: float, weight=None, bias=None):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis of float32 `x` (..., C); `weight`,
    `bias`: (C,) or None. Needs C a multiple of 16 (`layer_norm_supports`). Call only when `available()`.
    """
    return _kernels().layer_norm(x, eps, weight, bias)


def layer_norm_supports(channels: int) -> bool:
    """Whether `layer_norm` takes rows of `channels` channels."""
    return channels > 0 and channels % 16 == 0


def geglu(x):
    """h * gelu(gate) (the exact, erf GELU) for float32 `x` (..., 2 * D) = [h | gate] along its last
    axis, as GEGLU splits its projection; returns (..., D). Needs D a multiple of 16 (`geglu_supports`).
    Call only when `available()`.
    """
    return _kernels().geglu(x)


def geglu_supports(width: int) -> bool:
    """Whether `geglu` takes a projection of `width` = 2 * D columns."""
    return width > 0 and width % 32 == 0


def group_norm_supports(channels: int, groups: int) -> bool:
    """Whether `group_norm` takes `channels` channels in `groups` groups."""
    return channels > 0 and groups > 0 and channels % groups == 0 and channels % 16 == 0


def supports(height: int, width: int, channels: int, outputs: int) -> bool:
    """Whether `conv3x3` takes an output map of height x width with these channel counts."""
    return height % 2 == 0 and width % 2 == 0 and channels % 16 == 0 and outputs % 64 == 0
