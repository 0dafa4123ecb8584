"""Where a frame's time goes: each kind of work (convolutions, linear layers, attention cores, norms and
activations, the rest) timed in place, by wrapping the ops and layers that do it."""

from __future__ import annotations

import time
from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .flops import _wrapping
from .interleave import _paired_ratio, interleaved_times


def _profiled_callables():
    """(owner, attribute, kind) of what `timing_kinds` times: the module classes and the functions
    (looked up by name where they are called) that do each kind of work in a UNet or VAE call."""
    from .. import ops
    from ..models import layers, quantized

    return ((nn.Conv2d, "__call__", "convolution"), (layers.Conv2d, "__call__", "convolution"),
            (quantized.QuantizedConv2d, "__call__", "convolution"), (ops, "upsample_conv", "convolution"),
            (ops, "upsample_nearest", "convolution"),
            (nn.Linear, "__call__", "linear"), (quantized.QuantizedLinear, "__call__", "linear"),
            (ops, "multi_head_attention", "attention core"),
            (layers.GroupNorm, "__call__", "norm and activation"), (layers.GroupNorm, "silu", "norm and activation"),
            (layers.LayerNorm, "__call__", "norm and activation"), (nn.ReLU, "__call__", "norm and activation"),
            (ops, "silu", "norm and activation"), (ops, "geglu", "norm and activation"))


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


def profile_frame(pipe, latents: mx.array, embeddings: mx.array, vae: str = "auto") -> dict[str, float]:
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
                   vae: str = "auto") -> list[dict]:
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
