"""The benchmark runner: frames per second by precision level, batch size and component.

For each level (float32, float16, bfloat16, 8-bit, 4-bit) and batch size it times, after a
warm-up, the median of `runs` calls of: the text encoder (a batch of prompts), the UNet, the VAE decode
and the whole frame (UNet + decode), and reports frames per second, resident weight bytes, mlx
peak memory, the error against float32 (relative L2 of the UNet output, PSNR of the frame) and
the achieved GFLOP/s against the machine's matmul peak measured in the same run (float32; on a
GPU also the peak of each half-precision level's dtype, which its rows are measured against).

A reference (see benchmarks/torch_reference.py, used when torch and diffusers are installed)
times the same architecture with the same weights in PyTorch, in a process of its own (this one
has OpenBLAS in its global symbol scope, which would take over torch's BLAS calls). The levels
and PyTorch take turns call by call, so each ratio compares times taken in the same stretch of
the run. On a GPU (mlx's CUDA or Metal backend) the reference runs on the GPU too (`reference_device`),
with TF32 allowed exactly when mlx allows it (`tf32_enabled`). This module itself never imports torch.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import __version__
from .errors import MusicvizError
from .timing import call_seconds, median_time

LEVELS = ("float32", "float16", "bfloat16", "8bit", "4bit")
COMPONENTS = ("text_encoder", "unet", "vae", "frame")
LAYER_BURST = 3  # timed calls back to back in one turn of `time_layers`
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
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
    layers: bool = False  # also time every convolution and linear-layer shape of the float32 UNet and VAE
    profile: bool = False  # also split the float32 frame's time by kind of work, beside PyTorch's
    vae: str = "tiny"  # the VAE that decodes: "tiny" (SDXS's own) or "large" (the model's vae_large/)

    def check(self) -> None:
        """Raise MusicvizError for a level, batch size, VAE, number of runs or render length the runner
        cannot time."""
        from .pipeline import VAE_CHOICES

        unknown = [lv for lv in self.levels if lv not in LEVELS]
        if unknown:
            raise MusicvizError(f"unknown level {unknown[0]!r}; choose from {', '.join(LEVELS)}")
        if self.vae not in VAE_CHOICES:
            raise MusicvizError(f"unknown VAE {self.vae!r}; choose from {', '.join(VAE_CHOICES)}")
        if not self.batches or any(b < 1 for b in self.batches):
            raise MusicvizError("batch sizes must be at least 1")
        if self.runs < 1:
            raise MusicvizError(f"runs must be at least 1 (timed rounds after the warm-up), got {self.runs}")
        if not 0 <= self.render_seconds < float("inf"):  # nan fails too
            raise MusicvizError(f"render seconds must be 0 (no render) or more, got {self.render_seconds}")


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
    layers: list = field(default_factory=list)  # one per batch x component x distinct layer shape (`time_layers`)
    profile: list = field(default_factory=list)  # one per batch x kind of work (`profile_frames`)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, default=float)


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


def _watched_classes():
    """(class, kind) of the layers the benchmark counts and times. Kinds: "conv", "linear",
    "attention" (a UNet or VAE attention: the products of its core) and "clip_attention" (the
    text encoder's)."""
    from .models import layers, quantized, text_encoder

    return ((nn.Conv2d, "conv"), (layers.Conv2d, "conv"), (quantized.QuantizedConv2d, "conv"), (nn.Linear, "linear"),
            (quantized.QuantizedLinear, "linear"), (layers.Attention, "attention"),
            (text_encoder.CLIPAttention, "clip_attention"))


@contextmanager
def _wrapping(targets):
    """Within the block, each target (owner, attribute name, wrap) has its attribute replaced by
    `wrap(original)`; a class's own attribute is the one wrapped. All are restored on exit."""
    originals = []
    for owner, name, wrap in targets:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        originals.append((owner, name, original))
        setattr(owner, name, wrap(original))
    try:
        yield
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)


@contextmanager
def watching_layers(on_call):
    """Within the block, every top-level call of a convolution, linear layer or attention module is
    reported as `on_call(kind, module, args, out)` (a subclass calling its parent's `__call__`, as
    layers.Conv2d may, is reported once). So is every `layers.upsample_conv(x, conv)`, as a call of
    `conv` on `(x,)` whose output is twice x's size (the convolution's FLOPs are those of the
    upsampled map however it is computed). The classes and the function are restored on exit."""
    from .models import layers

    depth = {}

    def reporting(kind, module_and_args):
        depth.setdefault(kind, 0)

        def wrap(original):
            def call(*args, **kwargs):
                depth[kind] += 1
                try:
                    out = original(*args, **kwargs)
                finally:
                    depth[kind] -= 1
                if depth[kind] == 0:
                    on_call(kind, *module_and_args(args), out)
                return out

            return call

        return wrap

    targets = [(cls, "__call__", reporting(kind, lambda args: (args[0], args[1:]))) for cls, kind in _watched_classes()]
    targets.append((layers, "upsample_conv", reporting("conv", lambda args: (args[1], args[:1]))))
    with _wrapping(targets):
        yield


def call_layer(spec: dict, module, x: mx.array) -> mx.array:
    """`module` on x as `layer_shapes` saw it called: upsampled first where `spec` says so."""
    from .models import layers

    return layers.upsample_conv(x, module) if spec.get("upsample") else module(x)


def _conv_kernel(module) -> tuple:
    """(O, kh, kw, C) of a float or quantized convolution."""
    return tuple(module.kernel_shape if hasattr(module, "kernel_shape") else module.weight.shape)


def layer_flops(kind: str, module, args, out) -> float:
    """FLOPs of one call: 2 x its multiply-adds (for attention, those of q k^T and of weights @ v)."""
    if kind == "conv":
        _, kh, kw, c = _conv_kernel(module)
        return 2.0 * out.size * kh * kw * c
    if kind == "linear":
        return 2.0 * out.size * args[0].shape[-1]
    x = args[0]
    if kind == "clip_attention":
        return 4.0 * x.shape[0] * x.shape[1] * x.shape[1] * x.shape[2]
    context = args[1] if len(args) > 1 and args[1] is not None else x
    return 4.0 * x.shape[0] * x.shape[1] * context.shape[1] * out.shape[-1]


def count_flops(fn) -> float:
    """FLOPs of one call of `fn`: 2 x multiply-adds of every convolution, linear layer and attention
    product it runs (elementwise work is not counted)."""
    total = [0.0]

    def add(kind, module, args, out):
        total[0] += layer_flops(kind, module, args, out)

    with watching_layers(add):
        fn()
    return total[0]


def layer_shapes(fn) -> list[dict]:
    """The distinct convolution and linear-layer calls of one call of `fn`, in order of first call.

    Each: kind ("conv" or "linear"), input shape (convolutions NHWC), weight shape (convolutions
    (O, kh, kw, C), linear layers (O, K)), stride and padding (convolutions), `upsample` (2, for a
    convolution of the upsampled input, `layers.upsample_conv`; absent otherwise), bias, how many
    calls had that shape, FLOPs per call, and `module`, one of the modules that made those calls.
    """
    shapes = {}

    def record(kind, module, args, out):
        if kind not in ("conv", "linear"):
            return
        x = tuple(args[0].shape)
        if kind == "conv":
            spec = {"kind": kind, "input": x, "weight": _conv_kernel(module), "stride": tuple(module.stride),
                    "padding": tuple(module.padding)}
            if out.shape[1] > x[1]:
                spec["upsample"] = out.shape[1] // x[1]  # layers.upsample_conv: nearest upsampling first
        else:
            spec = {"kind": kind, "input": x, "weight": (out.shape[-1], x[-1])}
        spec["bias"] = "bias" in module
        key = json.dumps(spec)
        if key not in shapes:
            shapes[key] = {**spec, "calls": 0, "flops": layer_flops(kind, module, args, out), "module": module}
        shapes[key]["calls"] += 1

    with watching_layers(record):
        fn()
    return list(shapes.values())


def _profiled_callables():
    """(owner, attribute, kind) of what `timing_kinds` times: the module classes and the functions
    (looked up by name where they are called) that do each kind of work in a UNet or VAE call."""
    from .models import layers, quantized, unet

    return ((nn.Conv2d, "__call__", "convolution"), (layers.Conv2d, "__call__", "convolution"),
            (quantized.QuantizedConv2d, "__call__", "convolution"), (layers, "upsample_conv", "convolution"),
            (layers, "upsample_nearest", "convolution"),
            (nn.Linear, "__call__", "linear"), (quantized.QuantizedLinear, "__call__", "linear"),
            (layers, "multi_head_attention", "attention core"),
            (layers.GroupNorm, "__call__", "norm and activation"), (layers.GroupNorm, "silu", "norm and activation"),
            (layers.LayerNorm, "__call__", "norm and activation"), (nn.ReLU, "__call__", "norm and activation"),
            (layers, "silu", "norm and activation"), (unet, "silu", "norm and activation"),
            (unet, "geglu", "norm and activation"))


PROFILE_KINDS = ("convolution", "linear", "attention core", "norm and activation", "other")


def _arrays(tree) -> list:
    """The arrays in a call's arguments or result (lists, tuples, dicts); a module's parameters are not its
    call's inputs (nn.Module is a dict), so modules are skipped."""
    if isinstance(tree, nn.Module):
        return []
    if isinstance(tree, mx.array):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [a for item in tree for a in _arrays(item)]
    if isinstance(tree, dict):
        return [a for item in tree.values() for a in _arrays(item)]
    return []


@contextmanager
def timing_kinds(seconds: dict):
    """Within the block, every call of `_profiled_callables` adds its exclusive time (its own, less
    that of the profiled calls inside it) to `seconds[kind]`. Each call's inputs are evaluated
    before its clock starts and its outputs before it stops, so lazy work is charged to the call
    that made it; that also stops mlx from overlapping or fusing work across those boundaries, so
    a profiled call takes a little longer than a plain one. Restored on exit."""
    inside = []  # seconds of profiled calls nested in each open call

    def timed(kind):
        def wrap(original):
            def call(*args, **kwargs):
                mx.eval(_arrays(args) + _arrays(kwargs))
                inside.append(0.0)
                start = time.perf_counter()
                try:
                    out = original(*args, **kwargs)
                    mx.eval(_arrays(out))
                finally:
                    elapsed = time.perf_counter() - start
                    nested = inside.pop()
                    if inside:
                        inside[-1] += elapsed
                seconds[kind] = seconds.get(kind, 0.0) + elapsed - nested
                return out

            return call

        return wrap

    with _wrapping([(owner, name, timed(kind)) for owner, name, kind in _profiled_callables()]):
        yield


def profile_frame(pipe, latents: mx.array, embeddings: mx.array, vae: str = "tiny") -> dict[str, float]:
    """Seconds of one `pipe.generate` call split by kind of work (`PROFILE_KINDS`; "other" is what no
    profiled call covers: adds, copies, concatenations, the scheduler step, the conversion to
    8 bits) and its "total", all timed as `timing_kinds` does."""
    seconds = dict.fromkeys(PROFILE_KINDS[:-1], 0.0)
    with timing_kinds(seconds):
        start = time.perf_counter()
        mx.eval(pipe.generate(latents, embeddings, vae))
        total = time.perf_counter() - start
    return {**seconds, "other": total - sum(seconds.values()), "total": total}


def profile_frames(pipe, latents: mx.array, embeddings: mx.array, runs: int, reference=None,
                   vae: str = "tiny") -> list[dict]:
    """The frame's time by kind of work, MLX (`profile_frame`, float32) and PyTorch
    (`reference.profile`, torch.profiler's self time per operator, mapped to the same kinds), taking
    turns (`interleaved_times`). Rows: one per kind and "total", with both sides' rounds (seconds a
    call, `rounds_s`), the medians per image (`mlx_s`, `pytorch_s`) and the median of the rounds'
    ratios."""
    batch = latents.shape[0]
    splits = {"float32": [], "pytorch-float32": []}

    def mlx_side() -> float:
        splits["float32"].append(profile_frame(pipe, latents, embeddings, vae))
        return splits["float32"][-1]["total"]

    def pytorch_side() -> float:
        splits["pytorch-float32"].append(reference.profile("frame", batch))
        return splits["pytorch-float32"][-1]["total"]

    sides = {"float32": {"frame": mlx_side}}
    if reference is not None:
        sides["pytorch-float32"] = {"frame": pytorch_side}
    interleaved_times(sides, runs)
    rows = []
    for kind in (*PROFILE_KINDS, "total"):
        rounds = {side: [s[kind] for s in splits[side][1:]] for side in sides}  # [0]: the warm-up round
        row = {"batch": batch, "kind": kind, "rounds_s": rounds, "mlx_s": float(np.median(rounds["float32"])) / batch}
        if reference is not None:
            row["pytorch_s"] = float(np.median(rounds["pytorch-float32"])) / batch
            if min(rounds["pytorch-float32"]) > 0:
                row["mlx_over_pytorch"] = _paired_ratio(rounds["float32"], rounds["pytorch-float32"])
        rows.append(row)
    return rows


def machine_info() -> dict:
    from ._blas import blas_provider
    from ._malloc import keep_freed_memory

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


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _pipeline(source, level: str, group_size: int, vae: str = "tiny"):
    """The pipeline of a level; a quantized level quantizes what `convert --bits` does by default
    (the text encoder, the UNet and, when it decodes, the large VAE: the tiny VAE stays float)."""
    from .convert.checkpoint import DEFAULT_QUANTIZED
    from .pipeline import load_pipeline

    if level in DTYPES:
        return load_pipeline(source, dtype=DTYPES[level])
    bits = int(level.removesuffix("bit"))
    components = tuple(name for name in DEFAULT_QUANTIZED if name != "vae_large" or vae == "large")
    return load_pipeline(source).quantize(bits, group_size, components=components)


def interleaved_times(sides: dict[str, dict], runs: int, switch_pause: float = 0.2) -> dict[str, dict[str, list]]:
    """Seconds of each side's calls, taking turns: side -> component -> `runs` times.

    `sides`: side name -> component -> a function that runs the component once and returns its
    seconds. One untimed warm-up round, then `runs` rounds; in a round each component is run by
    every side once, in an order rotated from round to round. On a shared or throttling machine
    the speed drifts over minutes; taking turns puts every side's k-th time in the same stretch
    of it, so ratios of the k-th times compare like with like. Sides whose names start with
    "pytorch" run in another process: before a call that changes process, wait `switch_pause`
    seconds, so that the other side's idle BLAS threads (which spin for a while) are asleep.
    """
    names = list(sides)
    components = list(dict.fromkeys(c for calls in sides.values() for c in calls))
    times = {name: {c: [] for c in sides[name]} for name in names}
    last = [None]

    def call(name: str, component: str) -> float:
        process = name.startswith("pytorch")
        if last[0] is not None and last[0] != process:
            time.sleep(switch_pause)
        last[0] = process
        return sides[name][component]()

    for round_ in range(-1, runs):  # round -1: warm-up
        order = names[max(round_, 0) % len(names):] + names[:max(round_, 0) % len(names)]
        for component in components:
            for name in order:
                if component in sides[name]:
                    seconds = call(name, component)
                    if round_ >= 0:
                        times[name][component].append(seconds)
    return times


def level_peak(result: BenchResult, level: str) -> float:
    """GFLOP/s of the matmul peak a level is measured against: its dtype's where the run measured one
    (half precision on a GPU), else float32's (quantized levels compute in float32)."""
    return result.matmul_gflops_by_dtype.get(level, result.matmul_gflops)


def _timing_fields(rounds: dict[str, list], batch: int, result: BenchResult, peak: float) -> dict:
    """A side's timing fields from its rounds' seconds (each call on `batch` images): seconds per
    image (medians), frames per second, UNet and VAE GFLOP/s, the UNet's share of `peak` (GFLOP/s),
    and the rounds themselves (`rounds_s`, for reading the spread)."""
    seconds = {c: float(np.median(rounds[c])) for c in COMPONENTS}
    fields = {f"{c}_s": seconds[c] / batch for c in COMPONENTS}
    fields.update({"fps": batch / seconds["frame"],
                   "unet_gflops": result.flops["unet"] * batch / seconds["unet"] / 1e9,
                   "vae_gflops": result.flops["vae"] * batch / seconds["vae"] / 1e9})
    fields["unet_peak_fraction"] = fields["unet_gflops"] / peak
    fields["rounds_s"] = rounds
    return fields


def time_layers(pipe, latents: mx.array, embeddings: mx.array, runs: int, reference=None,
                vae: str = "tiny") -> list[dict]:
    """Every distinct convolution and linear-layer shape of one UNet call and one decode by the
    `vae` ("tiny" or "large") of `pipe` on `latents`, timed alone: the module itself on a random
    input of its shape, and the same shape in PyTorch (`reference.time_layer`), taking turns
    (`interleaved_times`).

    A turn is one untimed call and the median of `LAYER_BURST` calls back to back, as the layers
    run inside the model: a single call after the other side's turn would pay for waking its BLAS
    threads and for cold caches (timed that way on the 2-core VM, PyTorch's layers summed to more
    than its whole UNet).

    Rows: `layer_shapes`' fields (the module left out) plus component, batch, `runs` rounds'
    seconds a call on each side (`rounds_s`), the medians (`mlx_s`, `pytorch_s`), GFLOP/s and the
    median of the rounds' ratios MLX / PyTorch. Calls x median, summed over a component, is the
    time its convolutions and linear layers take; the component's own time less that sum is its
    other work (attention cores, norms, activations, copies).
    """
    noise = []  # the UNet call that lists its shapes gives the VAE its input

    def unet():
        noise.append(pipe.unet(latents, None, embeddings, temb=pipe._temb))
        mx.eval(noise[0])

    shapes = {"unet": layer_shapes(unet)}
    shapes["vae"] = layer_shapes(lambda: mx.eval(pipe.vae_for(vae).decode(noise[0])))
    rows, sides = {}, {"float32": {}, "pytorch-float32": {}}
    for component, specs in shapes.items():
        for i, spec in enumerate(specs):
            name = f"{component}/{i}"
            module = spec.pop("module")
            x = mx.random.normal(spec["input"], key=mx.random.key(i))
            mx.eval(x)
            run = lambda spec=spec, module=module, x=x: mx.eval(call_layer(spec, module, x))
            sides["float32"][name] = partial(median_time, run, LAYER_BURST)
            if reference is not None:
                sides["pytorch-float32"][name] = partial(reference.time_layer, spec, LAYER_BURST)
            rows[name] = {"component": component, "batch": latents.shape[0], **spec}
    if reference is None:
        sides.pop("pytorch-float32")
    times = interleaved_times(sides, runs)
    for name, row in rows.items():
        row["rounds_s"] = {side: times[side][name] for side in sides}
        for side, key in (("float32", "mlx"), ("pytorch-float32", "pytorch")):
            if side in sides:
                row[f"{key}_s"] = float(np.median(times[side][name]))
                row[f"{key}_gflops"] = row["flops"] / row[f"{key}_s"] / 1e9
        if reference is not None:
            row["mlx_over_pytorch"] = _paired_ratio(times["float32"][name], times["pytorch-float32"][name])
    return list(rows.values())


def layer_totals(layers: list[dict]) -> list[dict]:
    """`time_layers` rows summed per batch, component and kind: calls, FLOPs and seconds a component
    call (calls x median) on each side."""
    totals = {}
    for r in layers:
        total = totals.setdefault((r["batch"], r["component"], r["kind"]),
                                  {"batch": r["batch"], "component": r["component"], "kind": r["kind"], "calls": 0,
                                   "flops": 0.0})
        total["calls"] += r["calls"]
        total["flops"] += r["calls"] * r["flops"]
        for key in ("mlx_s", "pytorch_s"):
            if key in r:
                total[key] = total.get(key, 0.0) + r["calls"] * r[key]
    return list(totals.values())


def _layer_summary(layers: list[dict]) -> list[str]:
    lines = []
    for t in layer_totals(layers):
        line = f"{t['component']} {t['kind']} x{t['calls']}: MLX {t['mlx_s']:.3f} s ({t['flops'] / t['mlx_s'] / 1e9:.0f} GFLOP/s)"
        if "pytorch_s" in t:
            line += (f", PyTorch {t['pytorch_s']:.3f} s ({t['flops'] / t['pytorch_s'] / 1e9:.0f} GFLOP/s), "
                     f"{t['mlx_s'] / t['pytorch_s']:.2f}x")
        lines.append(line)
    return lines


def _paired_ratio(mine: list, theirs: list) -> float:
    """Median over rounds of this round's time over the other side's time in the same round."""
    return float(np.median([a / b for a, b in zip(mine, theirs)]))


def run_benchmark(config: BenchConfig, reference=None, log=print) -> BenchResult:
    """Run the benchmark. `reference` (benchmarks/torch_reference.py's TorchReference): `source`, a
    model mlx-musicviz can load with the reference's weights; `time(component, batch)`, seconds of
    one PyTorch call, asked for in turn with the MLX calls; `matmul_gflops`, its own matmul rate;
    `info`, where it ran.

    Every level's pipeline is loaded at once so that the levels (and PyTorch) take turns, call by
    call (see `interleaved_times`): times are medians of `runs` rounds, and the ratios (MLX over
    PyTorch, a level over float32) medians of the rounds' ratios. A level's peak memory is its
    weights plus the most its frame call allocated on top of what was already in use."""
    config.check()
    result = BenchResult(config=dict(config.__dict__), machine=machine_info())
    result.matmul_gflops_by["mlx"] = matmul_peak()
    if reference is not None:
        result.matmul_gflops_by["pytorch"] = reference.matmul_gflops
        result.reference_info = reference.info
    result.matmul_gflops = max(result.matmul_gflops_by.values())
    log(f"float32 matmul peak: {result.matmul_gflops:.0f} GFLOP/s ("
        + ", ".join(f"{k} {v:.0f}" for k, v in result.matmul_gflops_by.items())
        + (f"; on {result.machine['gpu']}, TF32 {'on' if result.machine['tf32'] else 'off'})" if on_gpu()
           else f"; mlx's BLAS {result.machine['blas']})"))
    if on_gpu():  # half precision has its own, much higher peak there (on the CPU it is float32's at best)
        for level in config.levels:
            if level in DTYPES and level != "float32":
                result.matmul_gflops_by_dtype[level] = matmul_peak(dtype=DTYPES[level])
                log(f"{level} matmul peak: {result.matmul_gflops_by_dtype[level]:.0f} GFLOP/s (mlx)")
    source = config.model
    if reference is not None:  # convert once beside the reference's files (removed with them), not into the cache
        from .convert import convert_checkpoint

        source = convert_checkpoint(reference.source, Path(reference.source).parent / "mlx")

    pipes, embeddings = {}, {}
    for level in config.levels:
        with warnings.catch_warnings(record=True) as caught:  # half precision on the CPU: logged as one line
            warnings.simplefilter("always")
            pipe = pipes[level] = _pipeline(source, level, config.group_size, config.vae)
        for warning in caught:
            log(f"warning: {level}: {warning.message}")
        embeddings[level] = pipe.encode_prompt(PROMPT)
        mx.eval(embeddings[level])
        if not result.flops:
            emb, latent = embeddings[level], pipe.latent_shape(config.size, config.size)[1:]
            one = mx.random.normal((1, *latent), key=mx.random.key(0))
            noise = pipe.unet(one.astype(pipe.dtype), None, emb.astype(pipe.dtype), temb=pipe._temb)
            result.flops = {
                "unet": count_flops(lambda: mx.eval(pipe.unet(one, None, emb, temb=pipe._temb))),
                "vae": count_flops(lambda: mx.eval(pipe.vae_for(config.vae).decode(noise))),
                "text_encoder": count_flops(lambda: mx.eval(pipe.encode_prompt(PROMPT))),
            }
            log("GFLOP per image: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in result.flops.items()))

    for batch in config.batches:
        rows, outputs, sides = {}, {}, {}
        for level, pipe in pipes.items():
            latents = mx.random.normal((batch, *pipe.latent_shape(config.size, config.size)[1:]), key=mx.random.key(1))
            embs = mx.broadcast_to(embeddings[level], (batch, *embeddings[level].shape[1:]))
            prompts = [PROMPT] * batch
            # pipe.denoise's two steps, kept apart: the UNet output is compared with float32's too
            noise = pipe.unet(latents.astype(pipe.dtype), None, embs.astype(pipe.dtype), temb=pipe._temb)
            denoised = pipe.scheduler.step(noise, latents.astype(pipe.dtype))
            image = pipe.decode(denoised, config.vae)
            mx.eval(latents, embs, noise, denoised, image)
            outputs[level] = (np.array(noise.astype(mx.float32)), np.array(image))
            noise = image = None
            in_use = mx.get_active_memory()
            mx.reset_peak_memory()
            mx.eval(pipe.generate(latents, embs, config.vae))
            weights = pipe.weight_bytes()
            rows[level] = {"level": level, "batch": batch, "weight_bytes": weights,
                           "peak_memory": mx.get_peak_memory() - in_use + sum(weights.values())}
            sides[level] = {
                "text_encoder": partial(call_seconds, lambda pipe=pipe, prompts=prompts: mx.eval(pipe.encode_prompt(prompts))),
                "unet": partial(call_seconds, lambda pipe=pipe, latents=latents, embs=embs: mx.eval(pipe.denoise(latents, embs))),
                "vae": partial(call_seconds, lambda pipe=pipe, denoised=denoised: mx.eval(pipe.decode(denoised, config.vae))),
                "frame": partial(call_seconds,
                                 lambda pipe=pipe, latents=latents, embs=embs: mx.eval(pipe.generate(latents, embs, config.vae))),
            }
        if reference is not None:
            sides["pytorch-float32"] = {c: (lambda c=c, b=batch: reference.time(c, b)) for c in COMPONENTS}
        times = interleaved_times(sides, config.runs)

        for level, row in rows.items():
            row.update(_timing_fields(times[level], batch, result, level_peak(result, level)))
            if "float32" in outputs:
                (ref_noise, ref_image), (noise, image) = outputs["float32"], outputs[level]
                row["unet_rel_l2"] = float(np.linalg.norm(noise - ref_noise) / np.linalg.norm(ref_noise))
                row["frame_psnr"] = _psnr(image, ref_image)
                if level != "float32":
                    row["over_float32"] = {c: _paired_ratio(times[level][c], times["float32"][c]) for c in COMPONENTS}
            result.rows.append(row)
            log(f"{level:>8} b{batch}: frame {row['frame_s']:.3f} s ({row['fps']:.2f} fps), UNet {row['unet_s']:.3f} s "
                f"({row['unet_gflops']:.0f} GFLOP/s, {row['unet_peak_fraction']:.0%} of peak), VAE {row['vae_s']:.3f} s, "
                f"weights {sum(row['weight_bytes'].values()) / 2**20:.0f} MiB"
                + (f"; frame {row['over_float32']['frame']:.2f}x float32" if "over_float32" in row else ""))

        if reference is not None:
            theirs = times["pytorch-float32"]
            row = {"level": "pytorch-float32", "batch": batch, **_timing_fields(theirs, batch, result, result.matmul_gflops)}
            if "float32" in times:
                row["mlx_over_pytorch"] = {c: _paired_ratio(times["float32"][c], theirs[c]) for c in COMPONENTS}
            result.reference.append(row)
            log(f" pytorch b{batch}: frame {row['frame_s']:.3f} s, UNet {row['unet_s']:.3f} s "
                f"({row['unet_gflops']:.0f} GFLOP/s, {row['unet_peak_fraction']:.0%} of peak), VAE {row['vae_s']:.3f} s"
                + (f"; MLX/PyTorch frame {row['mlx_over_pytorch']['frame']:.2f}x" if "mlx_over_pytorch" in row else ""))

        if (config.layers or config.profile) and "float32" in pipes:
            pipe = pipes["float32"]
            latents = mx.random.normal((batch, *pipe.latent_shape(config.size, config.size)[1:]), key=mx.random.key(1))
            embs = mx.broadcast_to(embeddings["float32"], (batch, *embeddings["float32"].shape[1:]))
            if config.layers:
                layers = time_layers(pipe, latents, embs, config.runs, reference, config.vae)
                result.layers += layers
                for line in _layer_summary(layers):
                    log(f" layers b{batch}: " + line)
            if config.profile:
                profile = profile_frames(pipe, latents, embs, config.runs, reference, config.vae)
                result.profile += profile
                log(f" profile b{batch}, s an image: " + ", ".join(
                    f"{r['kind']} {r['mlx_s']:.3f}" + (f" (PyTorch {r['pytorch_s']:.3f})" if "pytorch_s" in r else "")
                    for r in profile))
    pipes = embeddings = sides = pipe = None  # free the levels' weights before the render loads its own

    if config.render_seconds > 0:
        result.render = bench_render(source, config)
        r = result.render
        log(f"render {r['seconds']:.0f} s of audio: {r['frames']} frames in {r['total_s']:.1f} s; outside the model "
            f"{r['overhead_fraction']:.1%} (" + ", ".join(f"{k} {v:.2f} s" for k, v in r["times"].items()) + ")")
    return result


def bench_render(source, config: BenchConfig) -> dict:
    """End-to-end render of a clip: where the time goes, and the share outside the model.

    The walks are evaluated lazily inside the render's model graph, so they are timed here once
    more on their own (same features, same batches) and taken out of "model" into "walks".
    """
    import tempfile

    from .audio import analyze
    from .pipeline import load_pipeline
    from .rendering import DEMO_AUDIO, make_walkers, render

    pipe = load_pipeline(source)
    audio, fps, batch = config.audio or DEMO_AUDIO, 24, max(config.batches)
    with tempfile.TemporaryDirectory() as tmp:
        res = render(audio, PROMPT, output=Path(tmp) / "bench.mp4", pipeline=pipe,
                     size=config.size, fps=fps, duration=config.render_seconds, batch_size=batch, vae=config.vae)
    features = analyze(audio, fps=fps, duration=config.render_seconds)
    embeds = mx.zeros((13, pipe.tokenizer.model_max_length, pipe.text_encoder.hidden_size))
    noise_walk, prompt_walk = make_walkers(features, pipe, embeds, 1, config.size)
    t = time.perf_counter()
    for start in range(0, features.n_frames, batch):
        frames = np.arange(start, min(start + batch, features.n_frames))
        mx.eval(noise_walk.latents(frames), prompt_walk.embeddings(frames))
    walks = time.perf_counter() - t
    times = {k: v for k, v in res.times.items() if k != "total"}
    times["model"] = res.times["model"] - walks
    times["walks"] = walks
    outside = res.times["total"] - times["model"] - res.times.get("load", 0.0)
    return {"seconds": res.duration, "frames": res.frames, "total_s": res.times["total"], "times": times,
            "overhead_fraction": outside / max(res.times["total"] - res.times.get("load", 0.0), 1e-9),
            "fps": res.frames / max(res.times["model"] + res.times["encode"], 1e-9)}


def markdown(result: BenchResult) -> str:
    m = result.machine
    where = (f"{m['gpu']} (TF32 {'on' if m.get('tf32') else 'off'})" if m.get("gpu") else f"{m['device']}, BLAS: {m['blas']}")
    half = ", ".join(f"{k} {v:.0f}" for k, v in result.matmul_gflops_by_dtype.items())
    lines = [f"Machine: {m['platform']}, {m['cpus']} CPUs, mlx {m['mlx']} on {where}; "
             f"float32 matmul peak {result.matmul_gflops:.0f} GFLOP/s ("
             + ", ".join(f"{k} {v:.0f}" for k, v in result.matmul_gflops_by.items()) + ")"
             + (f"; half-precision matmul peaks (mlx; those levels' % peak): {half} GFLOP/s" if half else "")
             + f". Model {result.config['model']} at "
             f"{result.config['size']}x{result.config['size']}, {result.config.get('vae', 'tiny')} VAE; GFLOP per image: "
             + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in result.flops.items()) + ".", "",
             (f"Times: medians of {result.config['runs']} round(s), the levels and PyTorch taking turns call by call; "
              "ratios: medians of the rounds' ratios."), "",
             ("| level | batch | frame s | frame / float32 | fps | UNet s | VAE s | text enc. s/prompt | UNet GFLOP/s (% peak) "
              "| weights MiB | peak MiB | UNet rel L2 | frame PSNR dB |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result.rows:
        err = f"{r['unet_rel_l2']:.4f}" if "unet_rel_l2" in r else "-"
        psnr = f"{r['frame_psnr']:.1f}" if "frame_psnr" in r else "-"
        ratio = f"{r['over_float32']['frame']:.2f}x" if "over_float32" in r else "-"
        lines.append(f"| {r['level']} | {r['batch']} | {r['frame_s']:.3f} | {ratio} | {r['fps']:.2f} | {r['unet_s']:.3f} | "
                     f"{r['vae_s']:.3f} | {r['text_encoder_s']:.3f} | {r['unet_gflops']:.0f} ({r['unet_peak_fraction']:.0%}) | "
                     f"{sum(r['weight_bytes'].values()) / 2**20:.0f} | {r['peak_memory'] / 2**20:.0f} | {err} | {psnr} |")
    for r in result.reference:
        ratio = r.get("mlx_over_pytorch", {})
        lines.append(f"| PyTorch float32 | {r['batch']} | {r['frame_s']:.3f} | | {r['fps']:.2f} | {r['unet_s']:.3f} | "
                     f"{r['vae_s']:.3f} | {r.get('text_encoder_s', 0):.3f} | {r['unet_gflops']:.0f} ({r['unet_peak_fraction']:.0%}) "
                     "| - | - | - | - |")
        if ratio:
            text = f"{ratio['text_encoder']:.2f}x" if "text_encoder" in ratio else ""
            lines.append(f"| MLX / PyTorch | {r['batch']} | {ratio['frame']:.2f}x | | | {ratio['unet']:.2f}x | "
                         f"{ratio['vae']:.2f}x | {text} | | | | | |")
    if result.reference_info:
        info = result.reference_info
        on = info.get("device", "cpu")
        lines += ["", f"PyTorch {info['torch']} ({info['threads']} threads; VAE {info.get('vae', 'AutoencoderTiny')}"
                  + (f"; on {info.get('device_name', on)}, TF32 {'on' if info.get('tf32') else 'off'}" if on != "cpu" else "")
                  + ") ran in a process of its own, without mlx-musicviz's BLAS; BLAS libraries mapped there: "
                  + (", ".join(info["blas_libraries"]) or "none") + "."]
    if result.layers:
        lines += ["", *_layers_markdown(result)]
    if result.profile:
        lines += ["", *_profile_markdown(result)]
    if result.render:
        r = result.render
        lines += ["", f"End-to-end render of {r['seconds']:.1f} s of audio ({r['frames']} frames): {r['total_s']:.1f} s; "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in r["times"].items())
                  + f"; outside the model {r['overhead_fraction']:.1%}."]
    return "\n".join(lines) + "\n"


def _layers_markdown(result: BenchResult, largest: int = 8) -> list[str]:
    """The layer tables: per component and kind, and the shapes with the largest gaps to PyTorch."""
    with_reference = any("pytorch_s" in r for r in result.layers)
    lines = [("Convolutions and linear layers alone (float32; every distinct shape timed on its own"
              + (", in turns with PyTorch" if with_reference else "") + "; seconds a component call: calls x median "
              "of the shape's calls). \"other\" is the component's time in the table above less these: attention "
              "cores, norms, activations and copies; approximate, as a layer alone may run faster or slower than "
              "inside the model (negative: the layers alone took longer than the whole component)."), "",
             "| batch | component | kind | calls | MLX s | PyTorch s | MLX / PyTorch | MLX GFLOP/s | PyTorch GFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cells(mlx_s, pytorch_s, flops):
        if pytorch_s is None:
            return f"{mlx_s:.3f} | - | - | {flops / mlx_s / 1e9:.0f} | -" if flops else f"{mlx_s:.3f} | - | - | - | -"
        rates = f"{flops / mlx_s / 1e9:.0f} | {flops / pytorch_s / 1e9:.0f}" if flops else "- | -"
        return f"{mlx_s:.3f} | {pytorch_s:.3f} | {mlx_s / pytorch_s:.2f}x | {rates}"

    totals = layer_totals(result.layers)
    for t in totals:
        lines.append(f"| {t['batch']} | {t['component']} | {t['kind']} | {t['calls']} | "
                     f"{cells(t['mlx_s'], t.get('pytorch_s'), t['flops'])} |")
    for batch in dict.fromkeys(t["batch"] for t in totals):
        row = next((r for r in result.rows if r["level"] == "float32" and r["batch"] == batch), None)
        ref = next((r for r in result.reference if r["batch"] == batch), None)
        for component in ("unet", "vae"):
            layers = [t for t in totals if t["batch"] == batch and t["component"] == component]
            if row is None or not layers:
                continue
            mlx_other = row[f"{component}_s"] * batch - sum(t["mlx_s"] for t in layers)
            torch_other = ref[f"{component}_s"] * batch - sum(t["pytorch_s"] for t in layers) if ref and with_reference else None
            lines.append(f"| {batch} | {component} | other | | {cells(mlx_other, torch_other, 0)} |")
    if with_reference:
        gaps = sorted(result.layers, key=lambda r: -r["calls"] * (r["mlx_s"] - r["pytorch_s"]))[:largest]
        lines += ["", f"Shapes with the largest gaps (calls x (MLX - PyTorch)), the first {len(gaps)}:", "",
                  "| batch | component | kind | input | weight | calls | MLX ms | PyTorch ms | MLX GFLOP/s | PyTorch GFLOP/s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in gaps:
            lines.append(f"| {r['batch']} | {r['component']} | {r['kind']} | {'x'.join(map(str, r['input']))} | "
                         f"{'x'.join(map(str, r['weight']))} | {r['calls']} | {r['mlx_s'] * 1e3:.1f} | "
                         f"{r['pytorch_s'] * 1e3:.1f} | {r['mlx_gflops']:.0f} | {r['pytorch_gflops']:.0f} |")
    return lines


def _profile_markdown(result: BenchResult) -> list[str]:
    with_reference = any("pytorch_s" in r for r in result.profile)
    lines = [("The float32 frame by kind of work (`--profile`; seconds an image, medians"
              + (", in turns with PyTorch" if with_reference else "") + "). MLX: every convolution, linear layer, "
              "attention core, norm and activation call is evaluated where it returns and charged its own time "
              "(less that of profiled calls inside it); that stops mlx from overlapping work across those "
              "boundaries, so a profiled call can take a little longer than a plain one."
              + (" PyTorch: torch.profiler's self time per operator. " if with_reference else " ")
              + "\"other\": the rest of the call (adds, copies, concatenations, the scheduler step)."), "",
             "| batch | kind | MLX s | PyTorch s | MLX / PyTorch | MLX - PyTorch s |", "|---|---|---|---|---|---|"]
    for r in result.profile:
        if "pytorch_s" in r:
            ratio = f"{r['mlx_over_pytorch']:.2f}x" if "mlx_over_pytorch" in r else "-"
            theirs = f"{r['pytorch_s']:.3f} | {ratio} | {r['mlx_s'] - r['pytorch_s']:+.3f}"
        else:
            theirs = "- | - | -"
        lines.append(f"| {r['batch']} | {r['kind']} | {r['mlx_s']:.3f} | {theirs} |")
    return lines


def chart(result: BenchResult, path: Path) -> None:
    """A PNG bar chart: frames per second per level, one bar per batch size."""
    from PIL import Image, ImageDraw

    rows = result.rows + result.reference
    levels = list(dict.fromkeys(r["level"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    top = max(r["fps"] for r in rows) * 1.15
    w, h, left, bottom = 120 + 110 * len(levels), 360, 60, 300
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    colors = [(52, 101, 164), (245, 121, 0), (78, 154, 6), (204, 0, 0), (117, 80, 123)]
    d.line([(left, 20), (left, bottom), (w - 20, bottom)], fill="black")
    for i in range(5):
        v = top * i / 4
        y = bottom - (bottom - 20) * i / 4
        d.text((5, y - 6), f"{v:.2f}", fill="black")
    bar = 90 / max(len(batches), 1)
    for i, level in enumerate(levels):
        x0 = left + 20 + i * 110
        d.text((x0, bottom + 8), level, fill="black")
        for j, b in enumerate(batches):
            r = next((r for r in rows if r["level"] == level and r["batch"] == b), None)
            if r is None:
                continue
            y = bottom - (bottom - 20) * r["fps"] / top
            d.rectangle([x0 + j * bar, y, x0 + (j + 1) * bar - 2, bottom], fill=colors[j % len(colors)])
    for j, b in enumerate(batches):
        d.rectangle([w - 90, 20 + 16 * j, w - 80, 30 + 16 * j], fill=colors[j % len(colors)])
        d.text((w - 75, 18 + 16 * j), f"batch {b}", fill="black")
    where = result.machine.get("gpu") or f"{result.machine['machine']} {result.machine['cpus']} CPUs"
    d.text((left, bottom + 30), f"frames per second, {result.config['model']} {result.config['size']}px, "
           f"{where} ({result.machine['device']})", fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_outputs(result: BenchResult, out_dir: Path) -> list[Path]:
    from .weights import write_json

    out_dir = Path(out_dir)
    write_json(out_dir / "results.json", json.loads(result.to_json()))
    (out_dir / "results.md").write_text(markdown(result), encoding="utf-8")
    chart(result, out_dir / "fps.png")
    return [out_dir / "results.json", out_dir / "results.md", out_dir / "fps.png"]
