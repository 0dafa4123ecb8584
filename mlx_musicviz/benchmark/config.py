"""What a benchmark run measures (`BenchConfig`), what it found (`BenchResult`), and the machine it ran on
(its device, matmul peak, BLAS)."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from dataclasses import dataclass, field

import mlx.core as mx

from .. import __version__
from ..errors import MusicvizError
from ..timing import median_time

LEVELS = ("float32", "float16", "bfloat16", "8bit", "4bit")
COMPILED = "+compile"  # a level's suffix: its pipeline runs through mx.compile (`Pipeline.compiled`)
COMPONENTS = ("text_encoder", "unet", "vae", "frame")
LAYER_BURST = 3  # timed calls back to back in one turn of `time_layers`
PROMPT = "a lighthouse on a cliff in a storm, oil painting"


@dataclass
class BenchConfig:
    model: str = "random:sdxs-512-0.9"
    size: int = 512
    levels: tuple[str, ...] = ("float32", "8bit", "4bit")
    batches: tuple[int, ...] = (1, 4)
    group_size: int = 64
    runs: int = 3
    render_seconds: float = 10.0
    audio: str | None = None  # default: the bundled trumpet clip
    live_seconds: float = 0.0  # seconds of a song played through live mode with a simulated page (0: skip)
    live_fps: float = 24.0  # the live scenario's frames per second
    layers: bool = False  # also time every convolution and linear-layer shape of the float32 UNet and VAE
    profile: bool = False  # also split the float32 frame's time by kind of work, beside PyTorch's
    vae: str = "auto"  # the VAE that decodes: "tiny", "large" (KL) or "auto" (see Pipeline.vae_name)

    def check(self) -> None:
        """Raise MusicvizError for a level, batch size, VAE, number of runs or render length the runner
        cannot time."""
        from ..pipeline import VAE_CHOICES

        if not self.levels:
            raise MusicvizError(f"no level to time: give one or more of {', '.join(LEVELS)}")
        unknown = [lv for lv in self.levels if base_level(lv) not in LEVELS or lv.count("+") > 1
                   or (lv != base_level(lv) and not lv.endswith(COMPILED))]
        if unknown:
            raise MusicvizError(f"unknown level {unknown[0]!r}; choose from {', '.join(LEVELS)}, each also as "
                                f"LEVEL{COMPILED} (compiled with mx.compile)")
        if self.vae not in VAE_CHOICES:
            raise MusicvizError(f"unknown VAE {self.vae!r}; choose from {', '.join(VAE_CHOICES)}")
        if not self.batches or any(b < 1 for b in self.batches):
            raise MusicvizError("batch sizes must be at least 1")
        if self.runs < 1:
            raise MusicvizError(f"runs must be at least 1 (timed rounds after the warm-up), got {self.runs}")
        if not 0 <= self.render_seconds < float("inf"):  # nan fails too
            raise MusicvizError(f"render seconds must be 0 (no render) or more, got {self.render_seconds}")
        if not 0 <= self.live_seconds < float("inf"):
            raise MusicvizError(f"live seconds must be 0 (no live scenario) or more, got {self.live_seconds}")
        if not 1 <= self.live_fps <= 60:
            raise MusicvizError(f"live fps must be from 1 to 60, got {self.live_fps}")


@dataclass
class BenchResult:
    config: dict
    machine: dict
    matmul_gflops: float = 0.0  # the machine's float32 matmul peak: the best rate any measured BLAS reached
    matmul_gflops_by_dtype: dict = field(default_factory=dict)  # GPU only: mlx's peak for each half-precision level's dtype
    matmul_gflops_by: dict = field(default_factory=dict)  # "mlx" (its BLAS) and "pytorch" (in the reference's process)
    flops: dict = field(default_factory=dict)  # component -> FLOPs per image
    rows: list = field(default_factory=list)  # one per level x batch
    reference: list = field(default_factory=list)  # PyTorch rows (float32)
    reference_info: dict = field(default_factory=dict)  # torch version, threads, BLAS libraries in its process
    render: dict = field(default_factory=dict)
    live: dict = field(default_factory=dict)  # the live scenario (`benchmark.live.bench_live`)
    startup: dict = field(default_factory=dict)  # a fresh process's first analysis (`benchmark.startup.bench_startup`)
    layers: list = field(default_factory=list)  # one per batch x component x distinct layer shape (`time_layers`)
    profile: list = field(default_factory=list)  # one per batch x kind of work (`profile_frames`)

    def to_json(self) -> str:
        """Strict JSON: an infinite figure (the PSNR of identical frames) is written as null."""
        return json.dumps(_finite(json.loads(json.dumps(self.__dict__, default=float))), indent=2, allow_nan=False)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def on_gpu() -> bool:
    """Whether mlx computes on a GPU (its CUDA or Metal backend) rather than the CPU."""
    return mx.default_device() != mx.cpu


def reference_device() -> str:
    """The torch device for the PyTorch reference, beside mlx's default device: "cpu", or the GPU
    ("mps" beside mlx's Metal backend, "cuda" beside its CUDA backend)."""
    if not on_gpu():
        return "cpu"
    return "mps" if sys.platform == "darwin" else "cuda"


def tf32_enabled() -> bool:
    """Whether mlx may run float32 matmuls and convolutions in TF32 on GPUs that have it (CUDA, M5-class
    Apple GPUs): the environment variable MLX_ENABLE_TF32, on unless "0" (mlx's own default)."""
    return os.environ.get("MLX_ENABLE_TF32", "1").strip() != "0"


def matmul_peak(sizes: tuple[int, ...] | None = None, runs: int = 5, dtype=mx.float32) -> float:
    """GFLOP/s of mlx's n x n matmul in `dtype`: the best over `sizes` of the median of `runs` calls.
    Default sizes: 1024-3072 on the CPU, 2048-8192 on a GPU (which smaller products leave idle)."""
    sizes = sizes or ((2048, 4096, 8192) if on_gpu() else (1024, 2048, 3072))
    best = 0.0
    for n in sizes:
        a = mx.random.normal((n, n), key=mx.random.key(0)).astype(dtype)
        mx.eval(a)
        best = max(best, 2 * n**3 / median_time(lambda: mx.eval(a @ a), runs) / 1e9)
    return best


def machine_info() -> dict:
    from .._blas import blas_provider
    from .._malloc import keep_freed_memory

    return {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "mlx": mx.__version__, "device": str(mx.default_device()),
            "gpu": _gpu_name(), "tf32": on_gpu() and tf32_enabled(),
            "blas": blas_provider(), "malloc_keeps_freed_memory": keep_freed_memory(),
            "mlx_musicviz": __version__, "python": platform.python_version()}


def _gpu_name() -> str | None:
    """The GPU's name as mlx reports it (None on the CPU backend)."""
    if not on_gpu():
        return None
    try:
        return str(mx.device_info().get("device_name", "GPU"))
    except Exception:  # noqa: BLE001 - older mlx or a backend without device_info: the name is only a label
        return "GPU"


def base_level(level: str) -> str:
    """"float16" for "float16+compile": the level without its compilation."""
    return level.partition("+")[0]


def level_peak(result: BenchResult, level: str) -> float:
    """GFLOP/s of the matmul peak a level is measured against: its dtype's where the run measured one
    (half precision on a GPU), else float32's (quantized levels compute in float32)."""
    return result.matmul_gflops_by_dtype.get(base_level(level), result.matmul_gflops)
