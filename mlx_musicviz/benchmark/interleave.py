"""Timings taken in turns: each side (precision levels, PyTorch) called once a round, so that every ratio
compares times from the same stretch of the run; and the layers timed alone."""

from __future__ import annotations

import time
from functools import partial

import mlx.core as mx
import numpy as np

from ..timing import median_time
from .config import COMPONENTS, LAYER_BURST, BenchResult
from .flops import call_layer, layer_shapes


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
                vae: str = "auto") -> list[dict]:
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
        noise.append(pipe.predict_noise(latents, embeddings))
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
            run = partial(_evaluate_layer, spec, module, x)
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


def _evaluate_layer(spec: dict, module, x: mx.array) -> None:
    mx.eval(call_layer(spec, module, x))
